"""course_lib.score: exact scores against autograd, the noised mixtures, Langevin conventions,
the probability-flow ODE (Euler = DDIM eta 0 step for step; Heun), and loud errors."""

import math

import pytest
import torch

from course_lib import samplers, score
from course_lib.diffusion import eps_from_score
from course_lib.schedules import make_schedule


def _mixture(D=2):
    g = torch.Generator().manual_seed(0)
    return score.GaussianMixture(3 * torch.randn((3, D), generator=g), [0.5, 1.0, 2.0], [0.2, 0.3, 0.5])


def _autograd_score(mixture, x):
    x = x.clone().double().requires_grad_(True)
    mixture.log_prob(x).sum().backward()
    return x.grad


@pytest.mark.parametrize("D", [1, 2, 5])
def test_log_prob_and_score_match_autograd_and_scipy_free_formula(D):
    mix = _mixture(D)
    x = torch.randn((50, D), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4
    assert torch.allclose(mix.score(x), _autograd_score(mix, x), atol=1e-10)
    # log_prob by the textbook formula, component by component
    dens = sum(w * torch.exp(-((x - m) ** 2).sum(1) / (2 * s**2)) / (2 * math.pi * s**2) ** (D / 2)
               for m, s, w in zip(mix.means, mix.stds, mix.weights))
    assert torch.allclose(mix.log_prob(x), dens.log(), atol=1e-10)
    assert mix.score(x.float()).dtype == torch.float32


def test_score_far_from_the_data_is_finite():
    mix = score.GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8])
    x = torch.tensor([[200.0, -300.0], [1e4, 1e4]])
    s = mix.score(x)
    assert torch.isfinite(s).all()
    assert torch.allclose(s[1], torch.tensor([5.0 - 1e4, 5.0 - 1e4]))  # the nearest component wins


def test_sample_moments_and_generator():
    mix = score.GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8])
    x = mix.sample(40_000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 2) and x.dtype == torch.float32
    assert abs(score.mode_weights(mix, x)[1].item() - 0.8) < 0.01
    assert torch.allclose(x.mean(0), torch.tensor([3.0, 3.0]), atol=0.1)
    again = mix.sample(40_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_noised_and_perturbed_are_the_laws_of_the_noised_samples():
    mix = _mixture(2)
    g = torch.Generator().manual_seed(2)
    x0 = mix.sample(200_000, generator=g)
    ab, sigma = 0.3, 1.5
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=g)
    x_s = x0 + sigma * torch.randn(x0.shape, generator=g)
    for law, samples in ((mix.noised(ab), x_t), (mix.perturbed(sigma), x_s)):
        direct = law.sample(200_000, generator=g)
        assert torch.allclose(samples.mean(0), direct.mean(0), atol=0.03)
        assert torch.allclose(samples.var(0), direct.var(0), rtol=0.03)
    assert torch.allclose(mix.noised(ab).stds**2, ab * mix.stds**2 + 1 - ab)
    assert torch.allclose(mix.perturbed(sigma).stds**2, mix.stds**2 + sigma**2)
    assert torch.allclose(mix.noised(1.0).means, mix.means)


def test_exact_eps_is_minus_sqrt_one_minus_alpha_bar_times_the_noised_score():
    mix, s = _mixture(2), make_schedule("linear", 1000)
    model = score.exact_eps(mix, s)
    x = torch.randn((4, 2), generator=torch.Generator().manual_seed(3)) * 3
    t = torch.tensor([0, 10, 500, 999])  # a different timestep per row
    eps = model(x, t)
    for i in range(4):
        ab = s.alpha_bars.double()[t[i]].item()
        expected = -math.sqrt(1 - ab) * mix.noised(ab).score(x[i:i + 1].double())
        assert torch.allclose(eps[i].double(), expected[0], atol=1e-5)
    # agrees with diffusion.eps_from_score, and an int t broadcasts
    ab = s.alpha_bars[300].item()
    assert torch.allclose(model(x, 300), eps_from_score(mix.noised(ab).score(x), 300, s), atol=1e-5)


def test_tweedie_posterior_mean_by_monte_carlo():
    """E[x_0 | x_t] = (x_t + (1 - alpha_bar) score_t(x_t)) / sqrt(alpha_bar) (Efron, 2011), by importance weights."""
    mix = score.GaussianMixture([[-1.0, 0.0], [1.5, 1.0]], [0.3, 0.5], [0.4, 0.6])
    ab = 0.5
    x0 = mix.sample(400_000, generator=torch.Generator().manual_seed(4)).double()
    point = torch.tensor([[0.3, 0.2]], dtype=torch.float64)
    logw = -((point - math.sqrt(ab) * x0) ** 2).sum(1) / (2 * (1 - ab))
    w = torch.softmax(logw, 0)
    mc = (w[:, None] * x0).sum(0)
    tweedie = (point + (1 - ab) * mix.noised(ab).score(point)) / math.sqrt(ab)
    assert torch.allclose(mc, tweedie[0], atol=0.01)


def test_langevin_conventions():
    mix = score.GaussianMixture([[0.0, 0.0]], [1.0], [1.0])
    x = torch.full((5, 2), 3.0)
    # one step with a known noise: x + (eps/2) s + sqrt(eps) z
    z = torch.randn((5, 2), generator=torch.Generator().manual_seed(5))
    out = score.langevin(mix.score, x, 0.1, 1, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, x + 0.05 * (-x) + math.sqrt(0.1) * z)
    # annealed: alpha_i = eps sigma_i^2 / sigma_L^2, update alpha/2 and sqrt(alpha)
    sigmas = [4.0, 2.0]
    g = torch.Generator().manual_seed(6)
    out = score.annealed_langevin(lambda x, sg: mix.perturbed(sg).score(x), x, sigmas, 0.01, 2, generator=g)
    g = torch.Generator().manual_seed(6)
    ref = x.clone()
    for sg in sigmas:
        a = 0.01 * sg**2 / sigmas[-1] ** 2
        for _ in range(2):
            ref = ref + a / 2 * (-ref / (1 + sg**2)) + math.sqrt(a) * torch.randn((5, 2), generator=g)
    assert torch.allclose(out, ref, atol=1e-6)
    # zero steps leaves x alone
    assert torch.equal(score.langevin(mix.score, x, 0.1, 0), x)


def test_song_ermon_toy_plain_vs_annealed():
    """Song & Ermon (2019), Sec. 3.2.2 / Fig. 3: plain Langevin keeps the initial mode split; annealing fixes it."""
    mix = score.GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8])
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1000, 2), generator=g) * 16 - 8
    plain = score.langevin(mix.score, x, 0.1, 1000, generator=g)
    sigmas = score.geometric_sigmas(20.0, 1.0, 10)
    annealed = score.annealed_langevin(lambda x, s: mix.perturbed(s).score(x), x, sigmas, 0.1, 100, generator=g)
    assert abs(score.mode_weights(mix, plain)[1].item() - 0.5) < 0.06
    assert abs(score.mode_weights(mix, annealed)[1].item() - 0.8) < 0.05


def test_langevin_is_unstable_above_four_variances():
    mix = score.GaussianMixture([[0.0]], [1.0], [1.0])
    x = torch.zeros((200, 1))
    stable = score.langevin(mix.score, x, 3.5, 500, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(stable).all() and stable.abs().max() < 30
    blown = score.langevin(mix.score, x, 4.5, 500, generator=torch.Generator().manual_seed(0))
    assert not (torch.isfinite(blown).all() and blown.abs().max() < 1e6)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 5, 17])
def test_euler_pf_ode_is_ddim_eta0_step_for_step(steps, spacing):
    mix, s = _mixture(2), make_schedule("linear", 1000)
    model = score.exact_eps(mix, s)
    x_T = torch.randn((64, 2), generator=torch.Generator().manual_seed(7))
    x0, nfe = score.pf_ode_sample(model, x_T, s, steps, solver="euler", spacing=spacing)
    ddim = samplers.ddim_sample(model, x_T.shape, s, steps=steps, eta=0.0, spacing=spacing, x_T=x_T)
    assert nfe == steps
    assert torch.allclose(x0, ddim, atol=1e-4, rtol=1e-4)
    # and step by step: Euler from t to t_prev in y = x / sqrt(alpha_bar) is one ddim_step
    ts = samplers.ddim_timesteps(s.T, steps, spacing).tolist()
    x = x_T
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        eps = model(x, torch.full((64,), t))
        ab, ab_prev = s.alpha_bars.double()[t], (s.alpha_bars.double()[t_prev] if t_prev >= 0 else torch.tensor(1.0).double())
        sig, sig_prev = ((1 - ab) / ab).sqrt(), ((1 - ab_prev) / ab_prev).sqrt()
        y_prev = x.double() / ab.sqrt() + (sig_prev - sig) * eps.double()
        x_next = samplers.ddim_step(x, eps, t, t_prev, s, eta=0.0)
        assert torch.allclose((ab_prev.sqrt() * y_prev).float(), x_next, atol=1e-4, rtol=1e-4)
        x = x_next


def test_heun_is_karras_algorithm_1():
    mix, s = _mixture(2), make_schedule("linear", 1000)
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return score.exact_eps(mix, s)(x, t)

    x_T = torch.randn((32, 2), generator=torch.Generator().manual_seed(8))
    x0, nfe = score.pf_ode_sample(model, x_T, s, 4, solver="heun", spacing="trailing")
    ts = samplers.ddim_timesteps(s.T, 4, "trailing").tolist()
    assert nfe == 7 == len(calls)
    assert calls == [ts[0], ts[1], ts[1], ts[2], ts[2], ts[3], ts[3]]  # no correction on the last step
    # the same by hand
    sig = score.ode_sigmas(s)
    ab = s.alpha_bars.double()
    em = score.exact_eps(mix, s)
    y = x_T.double() / ab[ts[0]].sqrt()
    for t, tn in zip(ts, ts[1:] + [-1]):
        d = em((ab[t].sqrt() * y).float(), torch.full((32,), t)).double()
        sn = sig[tn] if tn >= 0 else 0.0
        y_e = y + (sn - sig[t]) * d
        if tn >= 0:
            d2 = em((ab[tn].sqrt() * y_e).float(), torch.full((32,), tn)).double()
            y = y + (sn - sig[t]) * (d + d2) / 2
        else:
            y = y_e
    assert torch.allclose(x0.double(), y, atol=1e-4)


def test_heun_beats_euler_with_enough_steps_on_the_exact_model():
    """Second order: at about 40 network evaluations Heun is closer to a fine reference than Euler."""
    mix = score.GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.4, 0.4], [0.5, 0.5])
    s = make_schedule("linear", 1000)
    model = score.exact_eps(mix, s)
    x_T = torch.randn((256, 2), generator=torch.Generator().manual_seed(9))
    ref, _ = score.pf_ode_sample(model, x_T, s, 1000, solver="euler", spacing="trailing")
    euler, _ = score.pf_ode_sample(model, x_T, s, 40, solver="euler", spacing="trailing")
    heun, _ = score.pf_ode_sample(model, x_T, s, 20, solver="heun", spacing="trailing")
    assert (heun - ref).abs().mean() < (euler - ref).abs().mean()


def test_metrics():
    mix = score.GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8])
    a = mix.sample(2000, generator=torch.Generator().manual_seed(0))
    b = mix.sample(2000, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    assert score.sliced_wasserstein(a, b, generator=g) < 0.3
    assert score.sliced_wasserstein(a, a + 2.0, generator=g) > 1.0
    assert score.sliced_wasserstein(a, b[:1500], generator=g) < 0.3
    x = torch.tensor([[5.0, 5.0], [float("nan"), 0.0]])
    assert score.mode_weights(mix, x).tolist() == [0.0, 0.5]


def test_device_follows_x():
    mix, s = _mixture(2), make_schedule("linear", 50)
    x = torch.randn((3, 2), dtype=torch.float64)
    assert score.exact_eps(mix, s)(x, 10).dtype == torch.float64
    assert score.pf_ode_sample(score.exact_eps(mix, s), x, s, 3)[0].dtype == torch.float64


@pytest.mark.parametrize("make, words", [
    (lambda: score.GaussianMixture([[0.0, 0.0]], [0.0], [1.0]), "stds must be finite and > 0"),
    (lambda: score.GaussianMixture([[0.0, 0.0]], [-1.0], [1.0]), "stds must be finite and > 0"),
    (lambda: score.GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [1.5, -0.5]), "weights must be >= 0"),
    (lambda: score.GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [0.5, 0.6]), "sum to 1"),
    (lambda: score.GaussianMixture([0.0, 1.0], [1.0, 1.0], [0.5, 0.5]), "(K, D)"),
    (lambda: score.GaussianMixture([[0.0], [1.0]], [1.0], [0.5, 0.5]), "need shape (2,)"),
    (lambda: _mixture(2).score(torch.zeros(5, 3)), "(N, 2)"),
    (lambda: _mixture(2).log_prob(torch.zeros(5)), "(N, 2)"),
    (lambda: _mixture(2).noised(0.0), "alpha_bar must be in (0, 1]"),
    (lambda: _mixture(2).perturbed(float("nan")), "finite"),
    (lambda: _mixture(2).sample(0), "positive integer"),
    (lambda: score.langevin(_mixture(2).score, torch.zeros(4, 2), 0.0, 10), "step_size"),
    (lambda: score.langevin(_mixture(2).score, torch.zeros(4, 2), -0.1, 10), "step_size"),
    (lambda: score.langevin(_mixture(2).score, torch.zeros(4, 2), float("nan"), 10), "finite number > 0"),
    (lambda: score.langevin(_mixture(2).score, torch.zeros(4, 2), float("inf"), 10), "finite number > 0"),
    (lambda: score.langevin(_mixture(2).score, torch.zeros(4, 2), 0.1, -1), "n_steps"),
    (lambda: score.langevin(lambda x: x[:, :1], torch.zeros(4, 2), 0.1, 1), "shaped like x"),
    (lambda: score.annealed_langevin(lambda x, s: x, torch.zeros(4, 2), [1.0, 2.0], 0.1, 5), "strictly decreasing"),
    (lambda: score.annealed_langevin(lambda x, s: x, torch.zeros(4, 2), [2.0, 2.0], 0.1, 5), "strictly decreasing"),
    (lambda: score.annealed_langevin(lambda x, s: x, torch.zeros(4, 2), [2.0, 0.0], 0.1, 5), "> 0"),
    (lambda: score.annealed_langevin(lambda x, s: x, torch.zeros(4, 2), [2.0, 1.0], 0.0, 5), "step_size"),
    (lambda: score.annealed_langevin(lambda x, s: x, torch.zeros(4, 2), [2.0, 1.0], 0.1, 0), "steps_per_level"),
    (lambda: score.pf_ode_sample(lambda x, t: x, torch.zeros(4, 2), make_schedule("linear", 100), 5, solver="rk4"),
     "valid solvers are euler, heun"),
    (lambda: score.pf_ode_sample(lambda x, t: x, torch.zeros(4, 2), make_schedule("linear", 100), 5, spacing="x"),
     "valid spacings"),
    (lambda: score.pf_ode_sample(lambda x, t: x[:, :1], torch.zeros(4, 2), make_schedule("linear", 100), 5),
     "model returned eps of shape"),
    (lambda: score.exact_eps(_mixture(2), make_schedule("linear", 100))(torch.zeros(4, 2), 100), "out of range"),
    (lambda: score.exact_eps(_mixture(2), make_schedule("linear", 100))(torch.zeros(4, 3), 10), "(N, 2)"),
    (lambda: score.geometric_sigmas(1.0, 20.0, 10), "sigma_min < sigma_max"),
    (lambda: score.sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 3)), "same D"),
])
def test_bad_input_is_loud(make, words):
    with pytest.raises(ValueError) as info:
        make()
    assert words in str(info.value)
