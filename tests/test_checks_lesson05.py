"""Lesson 05 checks: the reference solutions pass, stubs propagate NotImplementedError, and plausible
wrong implementations raise ExerciseError whose hint names the mistake."""

import math

import pytest
import torch

from course_lib import score
from course_lib.checks import ExerciseError, lesson05


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise 5.x: stub")


# ---------------------------------------------------------------------------------------- 5.1

def _score(x, means, stds, weights, sign=1.0, power=2, use_weights=True, norm=True, log_space=True, divide=True):
    diff = means.unsqueeze(0) - x.unsqueeze(1)  # (N, K, D)
    var = stds**2
    D = x.shape[1]
    logn = -0.5 * diff.pow(2).sum(-1) / var - (0.5 * D * torch.log(2 * math.pi * var) if norm else 0)
    logits = logn + (weights.log() if use_weights else 0)
    if not divide:
        r = logits.exp()
    elif log_space:
        r = torch.softmax(logits, dim=1)
    else:
        p = logits.exp()
        r = p / p.sum(1, keepdim=True)
    return sign * (r.unsqueeze(-1) * diff / (stds**power)[:, None]).sum(1)


def good_score(x, means, stds, weights):
    return _score(x, means, stds, weights)


def score_wrong_sign(x, means, stds, weights):
    return _score(x, means, stds, weights, sign=-1.0)


def score_over_std(x, means, stds, weights):
    return _score(x, means, stds, weights, power=1)


def score_no_weights(x, means, stds, weights):
    return _score(x, means, stds, weights, use_weights=False)


def score_no_normaliser(x, means, stds, weights):
    return _score(x, means, stds, weights, norm=False)


def score_grad_p(x, means, stds, weights):
    return _score(x, means, stds, weights, divide=False)


def score_naive_exp(x, means, stds, weights):
    return _score(x, means, stds, weights, log_space=False)


def test_mixture_score_reference_passes(capsys):
    lesson05.check_mixture_score(good_score)
    lesson05.check_mixture_score(lambda x, m, s, w: score.GaussianMixture(m, s, w).score(x))
    assert "Exercise 5.1 passed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- 5.2

def good_eps(mixture, x_t, t, schedule):
    ab = schedule.alpha_bars[t].item()
    return -math.sqrt(1 - ab) * mixture.noised(ab).score(x_t)


def eps_wrong_sign(mixture, x_t, t, schedule):
    return -good_eps(mixture, x_t, t, schedule)


def eps_missing_sqrt(mixture, x_t, t, schedule):
    ab = schedule.alpha_bars[t].item()
    return -(1 - ab) * mixture.noised(ab).score(x_t)


def eps_clean_score(mixture, x_t, t, schedule):
    ab = schedule.alpha_bars[t].item()
    return -math.sqrt(1 - ab) * mixture.score(x_t)


def eps_perturbed(mixture, x_t, t, schedule):
    ab = schedule.alpha_bars[t].item()
    return -math.sqrt(1 - ab) * mixture.perturbed(math.sqrt(1 - ab)).score(x_t)


def eps_alphas(mixture, x_t, t, schedule):
    a = schedule.alphas[t].item()
    return -math.sqrt(1 - a) * mixture.noised(a).score(x_t)


def eps_off_by_one(mixture, x_t, t, schedule):
    ab = schedule.alpha_bars[max(t - 1, 0)].item()
    return -math.sqrt(1 - ab) * mixture.noised(ab).score(x_t)


def test_mixture_eps_reference_passes(capsys):
    lesson05.check_mixture_eps(good_eps)
    lesson05.check_mixture_eps(lambda m, x, t, s: score.exact_eps(m, s)(x, t))
    assert "Exercise 5.2 passed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- 5.3

def _annealed(kind):
    def run(score_fn, x, sigmas, step_size, steps_per_level, generator=None):
        if kind != "no_error" and any(b >= a for a, b in zip(sigmas[:-1], sigmas[1:])):
            raise ValueError("sigmas must be strictly decreasing")
        return lesson05._annealed_variant(score_fn, x, sigmas, step_size, steps_per_level, generator, kind)
    return run


def annealed_randn_like(score_fn, x, sigmas, step_size, steps_per_level, generator=None):
    """Right algorithm, noise from the global RNG instead of `generator`: accepted on its statistics."""
    if any(b >= a for a, b in zip(sigmas[:-1], sigmas[1:])):
        raise ValueError("sigmas must be strictly decreasing")
    torch.manual_seed(0)
    for sigma in sigmas:
        alpha = step_size * sigma**2 / sigmas[-1] ** 2
        for _ in range(steps_per_level):
            x = x + alpha / 2 * score_fn(x, sigma) + math.sqrt(alpha) * torch.randn_like(x)
    return x


def test_annealed_reference_passes(capsys):
    lesson05.check_annealed_langevin(_annealed("good"))
    lesson05.check_annealed_langevin(score.annealed_langevin)
    lesson05.check_annealed_langevin(annealed_randn_like)
    out = capsys.readouterr().out
    assert out.count("Exercise 5.3 passed") == 3 and "use generator=" in out


# ---------------------------------------------------------------------------------------- 5.4

def heun_euler_only(model, x, t, t_next, schedule):
    return lesson05._heun_variants(model, x, t, t_next, schedule)[0][0].to(x.dtype)


def heun_correct_last(model, x, t, t_next, schedule):
    if t_next >= 0:
        return lesson05.heun_step_reference(model, x, t, t_next, schedule)
    return lesson05._heun_variants(model, x, t, t_next, schedule)[1][0].to(x.dtype)


def heun_wrong_sigma(model, x, t, t_next, schedule):
    return lesson05._heun_variants(model, x, t, t_next, schedule)[-2][0].to(x.dtype)


def heun_in_x(model, x, t, t_next, schedule):
    return lesson05._heun_variants(model, x, t, t_next, schedule)[-1][0].to(x.dtype)


def heun_one_call_then_wrong(model, x, t, t_next, schedule):
    """Euler step plus a correction with the SAME slope: one model call, looks like Heun in the code."""
    return heun_euler_only(model, x, t, t_next, schedule)


def test_heun_reference_passes(capsys):
    lesson05.check_heun_step(lesson05.heun_step_reference)
    assert "Exercise 5.4 passed" in capsys.readouterr().out


def test_heun_step_is_what_pf_ode_sample_does():
    from course_lib.schedules import make_schedule
    s = make_schedule("linear", 1000)
    mix = score.GaussianMixture([[-1.0, 0.0], [1.0, 1.0]], [0.5, 0.5], [0.5, 0.5])
    model = score.exact_eps(mix, s)
    x = torch.randn((8, 2), generator=torch.Generator().manual_seed(0))
    ts = [999, 666, 332]
    y = x
    for t, tn in zip(ts, ts[1:] + [-1]):
        y = lesson05.heun_step_reference(model, y, t, tn, s)
    ref, nfe = score.pf_ode_sample(model, x, s, 3, solver="heun", spacing="trailing")
    assert nfe == 5 and torch.allclose(y, ref, atol=1e-5)


# ---------------------------------------------------------------------------------------- 5.1-5.4: wrong answers, stubs

@pytest.mark.parametrize("check, ex, wrong, words", [
    (lesson05.check_mixture_score, "5.1", score_wrong_sign, "wrong sign"),
    (lesson05.check_mixture_score, "5.1", score_over_std, "variance s_k^2, not by the std"),
    (lesson05.check_mixture_score, "5.1", score_no_weights, "need the weights w_k"),
    (lesson05.check_mixture_score, "5.1", score_no_normaliser, "normalising constant"),
    (lesson05.check_mixture_score, "5.1", score_grad_p, "divide by p(x)"),
    (lesson05.check_mixture_score, "5.1", score_naive_exp, "log space"),
    (lesson05.check_mixture_eps, "5.2", eps_wrong_sign, "wrong sign"),
    (lesson05.check_mixture_eps, "5.2", eps_missing_sqrt, "missing sqrt"),
    (lesson05.check_mixture_eps, "5.2", eps_clean_score, "CLEAN mixture"),
    (lesson05.check_mixture_eps, "5.2", eps_perturbed, "perturbed(sigma)"),
    (lesson05.check_mixture_eps, "5.2", eps_alphas, "wrong sigma at t: use the cumulative"),
    (lesson05.check_mixture_eps, "5.2", eps_off_by_one, "off-by-one"),
    (lesson05.check_annealed_langevin, "5.3", _annealed("code"), "alpha vs alpha/2 convention mix-up"),
    (lesson05.check_annealed_langevin, "5.3", _annealed("full_drift"), "alpha vs alpha/2 convention mix-up"),
    (lesson05.check_annealed_langevin, "5.3", _annealed("sigma_1"), "sigma_L the SMALLEST"),
    (lesson05.check_annealed_langevin, "5.3", _annealed("no_sqrt"), "missing sqrt"),
    (lesson05.check_annealed_langevin, "5.3", _annealed("reuse_all"), "reused noise draw"),
    (lesson05.check_annealed_langevin, "5.3", _annealed("reuse_level"), "reused noise draw"),
    (lesson05.check_annealed_langevin, "5.3", _annealed("no_error"), "missing ValueError"),
    (lesson05.check_heun_step, "5.4", heun_euler_only, "Euler step"),
    (lesson05.check_heun_step, "5.4", heun_correct_last, "Heun correction applied at the last step"),
    (lesson05.check_heun_step, "5.4", heun_wrong_sigma, "wrong sigma at t"),
    (lesson05.check_heun_step, "5.4", heun_in_x, "y = x / sqrt(alpha_bar)"),
])
def test_wrong_implementation_fails(check, ex, wrong, words):
    with pytest.raises(ExerciseError) as info:
        check(wrong)
    assert ex in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("check", [lesson05.check_mixture_score, lesson05.check_mixture_eps,
                                   lesson05.check_annealed_langevin, lesson05.check_heun_step])
def test_stub_propagates(check):
    with pytest.raises(NotImplementedError):
        check(_stub)


def test_annealed_stub_after_validation_propagates():
    """A learner who wrote the ValueError but not the loop: the stub still surfaces."""
    def half_done(score_fn, x, sigmas, step_size, steps_per_level, generator=None):
        if any(b >= a for a, b in zip(sigmas[:-1], sigmas[1:])):
            raise ValueError("sigmas must be strictly decreasing")
        raise NotImplementedError("Exercise 5.3: stub")
    with pytest.raises(NotImplementedError):
        lesson05.check_annealed_langevin(half_done)


# ---------------------------------------------------------------------------------------- 5.5

def _setup():
    mix = score.GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8])
    x_init = (torch.rand((200, 2), generator=torch.Generator().manual_seed(0)) * 2 - 1) * 8
    return mix, x_init, 300, 1


def test_largest_stable_step_true_answer_passes(capsys):
    mix, x_init, n_steps, seed = _setup()
    lesson05.check_largest_stable_step(3.98, mix, x_init, n_steps, seed)  # the slider notch 10^0.6
    lesson05.check_largest_stable_step(3.6, mix, x_init, n_steps, seed)
    assert capsys.readouterr().out.count("Exercise 5.5 passed") == 2


@pytest.mark.parametrize("answer, words", [(5.0, "diverges"), (1.0, "LARGEST"), (0.1, "LARGEST"),
                                           (-1.0, "positive number"), (None, "positive number"), (True, "positive number")])
def test_largest_stable_step_wrong_fails(answer, words):
    mix, x_init, n_steps, seed = _setup()
    with pytest.raises(ExerciseError) as info:
        lesson05.check_largest_stable_step(answer, mix, x_init, n_steps, seed)
    assert "5.5" in str(info.value) and words in str(info.value)


def test_widget_and_check_agree_on_stability():
    import matplotlib
    matplotlib.use("Agg")
    from course_lib import widgets
    mix, _, _, _ = _setup()
    w = widgets.langevin_explorer(mix, n=200, n_steps=300, step_size=3.98)
    assert w.stable == lesson05.langevin_stable(mix, w.x_init, 3.98, 300, w.run_seed)
    w.step_size.value = 4.5
    assert w.stable == lesson05.langevin_stable(mix, w.x_init, 4.5, 300, w.run_seed) is False
