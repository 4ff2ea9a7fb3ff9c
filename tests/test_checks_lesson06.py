"""Lesson 06 checks: the reference solutions pass, stubs propagate NotImplementedError, and plausible
wrong implementations raise ExerciseError whose hint names the mistake."""

import math

import pytest
import torch

from course_lib import guidance, samplers
from course_lib.checks import ExerciseError, lesson06


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise 6.x: stub")


# ---------------------------------------------------------------------------------------- 6.1

def _grad(classifier, x_t, t, y, mode="log_softmax", sign=1.0, reduce="sum", detach=True, inplace=False):
    x = x_t if inplace else x_t.detach()
    x.requires_grad_(True)
    with torch.enable_grad():
        logits = classifier(x, t)
        B = x.shape[0]
        if mode == "log_softmax":
            v = torch.log_softmax(logits, -1)[torch.arange(B), y]
        elif mode == "logits":
            v = logits[torch.arange(B), y]
        elif mode == "softmax":
            v = torch.softmax(logits, -1)[torch.arange(B), y]
        elif mode == "all_classes":
            v = torch.log_softmax(logits, -1)
        v = v.sum() if reduce == "sum" else v.mean()
        (g,) = torch.autograd.grad(v, x, create_graph=not detach)
    return sign * (g.detach() if detach else g)


def grad_log_p(classifier, x_t, t, y):
    return _grad(classifier, x_t, t, y)


@pytest.mark.parametrize("kwargs, words", [
    ({"sign": -1.0}, "wrong sign"),
    ({"mode": "logits"}, "log_softmax"),
    ({"mode": "softmax"}, r"grad p\(y \| x_t\), not grad log p"),
    ({"reduce": "mean"}, "batch size"),
    ({"mode": "all_classes"}, "ALL classes"),
    ({"detach": False}, "forgot to detach"),
    ({"inplace": True}, "changed the x_t"),
])
def test_grad_log_p_mistakes_are_named(kwargs, words):
    with pytest.raises(ExerciseError, match=words):
        lesson06.check_grad_log_p(lambda c, x, t, y: _grad(c, x, t, y, **kwargs))


def test_grad_log_p_reference_and_library_pass(capsys):
    lesson06.check_grad_log_p(grad_log_p)
    lesson06.check_grad_log_p(guidance.classifier_log_prob_grad)
    assert "✅ Exercise 6.1 passed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- 6.2

def _eps(model, classifier, x_t, t, y, s, schedule, factor="sqrt", sign=-1.0, power=1, grad="x_t", mode="log_softmax",
         detach=True, clf_t=None):
    ab = schedule.alpha_bars[t].item()
    B = x_t.shape[0]
    eps = model(x_t, torch.full((B,), t))
    tc = t if clf_t is None else clf_t
    if grad == "x_t":
        g = _grad(classifier, x_t, tc, y, mode=mode, detach=detach)
    elif grad == "x0_hat":
        from course_lib.diffusion import predict_x0
        g = _grad(classifier, predict_x0(x_t, eps, t, schedule).detach(), tc, y)
    elif grad == "through":
        from course_lib.diffusion import predict_x0
        x = x_t.detach().requires_grad_(True)
        lp = torch.log_softmax(classifier(predict_x0(x, model(x, torch.full((B,), t)), t, schedule), tc), -1)
        g = torch.autograd.grad(lp[torch.arange(B), y].sum(), x)[0]
    c = {"sqrt": math.sqrt(1 - ab), "none": 1.0, "nosqrt": 1 - ab, "ab": math.sqrt(ab)}[factor]
    return eps + sign * s**power * c * g


def guided_eps(model, classifier, x_t, t, y, s, schedule):
    return _eps(model, classifier, x_t, t, y, s, schedule)


@pytest.mark.parametrize("kwargs, words", [
    ({"sign": 1.0}, "wrong sign"),
    ({"factor": "none"}, "missing the factor sqrt"),
    ({"factor": "nosqrt"}, r"not \(1 - alpha_bar_t\)"),
    ({"factor": "ab"}, r"not sqrt\(alpha_bar_t\)"),
    ({"power": 2}, "applied twice"),
    ({"mode": "logits"}, "log_softmax"),
    ({"grad": "x0_hat"}, "with respect to x0_hat"),
    ({"grad": "through"}, "differentiated through the denoiser"),
    ({"clf_t": 0}, "called at t = 0"),
    ({"detach": False}, "forgot to detach"),
])
def test_guided_eps_mistakes_are_named(kwargs, words):
    with pytest.raises(ExerciseError, match=words):
        lesson06.check_guided_eps(lambda *a: _eps(*a, **kwargs))


def test_guided_eps_reference_and_library_pass(capsys):
    lesson06.check_guided_eps(guided_eps)
    lesson06.check_guided_eps(lambda m, c, x, t, y, s, sch: guidance.classifier_guided(m, c, y, s, sch)(
        x, torch.full((x.shape[0],), t)))
    assert "✅ Exercise 6.2 passed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- 6.3

def _ms(model, classifier, y, s, x_T, schedule, steps, generator, clf_time="t", variance="small", sign=1.0, power=1,
        grad_at="x_t"):
    ts = samplers.ddim_timesteps(schedule.T, steps).tolist()
    x = x_T
    for i, (t, t_prev) in enumerate(zip(ts, ts[1:] + [-1])):
        eps = model(x, torch.full((x.shape[0],), t))
        ab = schedule.alpha_bars[t].item()
        ab_prev = schedule.alpha_bars[t_prev].item() if t_prev >= 0 else 1.0
        sigma2 = 0.0 if t_prev < 0 else (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        if variance == "std":
            sigma2 = math.sqrt(sigma2)
        elif variance == "large":
            sigma2 = 1 - ab / ab_prev
        x_prev = samplers.ddpm_step(x, eps, t, t_prev, schedule, generator=generator)
        point = x if grad_at == "x_t" else x_prev
        tc = {"t": t, "i": i, "t_prev": max(t_prev, 0)}[clf_time]
        x = x_prev + sign * s**power * sigma2 * grad_log_p(classifier, point, tc, y)
    return x


def mean_shift_sample(model, classifier, y, s, x_T, schedule, steps, generator):
    return _ms(model, classifier, y, s, x_T, schedule, steps, generator)


@pytest.mark.parametrize("kwargs, words", [
    ({"clf_time": "i"}, "step index"),
    ({"clf_time": "t_prev"}, "called at t_prev"),
    ({"variance": "std"}, "not the std"),
    ({"variance": "large"}, "'large' variance"),
    ({"sign": -1.0}, "wrong sign"),
    ({"power": 2}, "applied twice"),
    ({"grad_at": "x_prev"}, "new point x_prev"),
])
def test_mean_shift_mistakes_are_named(kwargs, words):
    with pytest.raises(ExerciseError, match=words):
        lesson06.check_mean_shift_sample(lambda *a: _ms(*a, **kwargs))


def test_mean_shift_reference_passes(capsys):
    lesson06.check_mean_shift_sample(mean_shift_sample)
    assert "✅ Exercise 6.3 passed" in capsys.readouterr().out


def test_mean_shift_with_other_noise_fails_with_the_generic_hint():
    def other_noise(model, classifier, y, s, x_T, schedule, steps, generator):
        return mean_shift_sample(model, classifier, y, s, x_T, schedule, steps, torch.Generator().manual_seed(123))

    with pytest.raises(ExerciseError, match="is off"):
        lesson06.check_mean_shift_sample(other_noise)


# ---------------------------------------------------------------------------------------- 6.4

class _FakeWidget:
    """The attributes the widget checks read: scale.options and evaluate(s)."""

    def __init__(self, all_right):
        self.scale = type("S", (), {"options": tuple(all_right)})()
        self._r = all_right

    def evaluate(self, s):
        ok = self._r[s]
        return {"all_right": ok, "digits_right": 10 if ok else 8, "accuracy": 1.0 if ok else 0.85, "spread": 5.0}


@pytest.mark.parametrize("check", [lesson06.check_grad_log_p, lesson06.check_guided_eps,
                                   lesson06.check_mean_shift_sample])
def test_stubs_propagate_not_implemented(check):
    with pytest.raises(NotImplementedError):
        check(_stub)


class _CountWidget(_FakeWidget):
    def __init__(self, counts):
        self.scale = type("S", (), {"options": tuple(counts)})()
        self._c = counts

    def evaluate(self, s):
        return {"all_right": self._c[s] == 10, "digits_right": self._c[s], "accuracy": self._c[s] / 10, "spread": 5.0}


def test_widget_question_most_digits_right(capsys):
    w = _CountWidget({0.0: 1, 1.0: 4, 2.0: 7, 5.0: 7, 10.0: 6})
    lesson06.check_most_digits_right(2.0, w)
    assert "✅ Exercise 6.4 passed" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="reaches 7/10"):
        lesson06.check_most_digits_right(10.0, w)
    with pytest.raises(ExerciseError, match="SMALLEST"):
        lesson06.check_most_digits_right(5.0, w)
    with pytest.raises(ExerciseError, match="one of the slider's scales"):
        lesson06.check_most_digits_right(3.0, w)
