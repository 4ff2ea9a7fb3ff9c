"""Closed forms and behaviour of course_lib: schedules, forward process, samplers, guidance, nets,
training and the pretrained-model store. Expected values are derived independently (products of
betas in float64, Bayes' rule on Gaussians, analytic scores), never copied from course_lib's output.
"""

import json
import math
import re

import pytest
import torch

from course_lib import data, diffusion, guidance, nets, pretrained, samplers, schedules, train


@pytest.fixture(scope="module")
def lin():
    return schedules.make_schedule("linear", 1000)


@pytest.fixture(scope="module")
def cos():
    return schedules.make_schedule("cosine", 1000)


def ref_alpha_bar(betas, t):
    """alpha_bar_t = prod_{s <= t} (1 - beta_s) in float64, straight from the definition; t = -1 -> 1."""
    return torch.prod(1 - betas.double()[: t + 1]).item() if t >= 0 else 1.0


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- schedules


def test_linear_betas_endpoints_and_spacing():
    s = schedules.make_schedule("linear", 1000)
    assert s.T == 1000 and s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    steps = s.betas.double().diff()
    torch.testing.assert_close(steps, torch.full_like(steps, (0.02 - 1e-4) / 999), rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alpha_bars_are_the_cumulative_product(name):
    s = schedules.make_schedule(name, 1000)
    for t in [0, 1, 2, 10, 499, 998, 999]:
        assert s.alpha_bars[t].item() == pytest.approx(ref_alpha_bar(s.betas, t), rel=1e-6, abs=1e-12)
    assert s.alpha_bars[0].item() == pytest.approx(1 - s.betas[0].item(), rel=1e-7)
    assert (s.alpha_bars.diff() < 0).all()  # strictly decreasing: every step adds noise
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    ab = torch.cumprod(1 - s.betas.double(), 0)  # the float64 product, not the float32-rounded alpha_bars
    torch.testing.assert_close(s.snr.double(), ab / (1 - ab), rtol=1e-6, atol=0)
    torch.testing.assert_close(s.log_snr.double(), torch.log(ab / (1 - ab)), rtol=1e-6, atol=1e-6)


def test_cosine_alpha_bar_follows_its_closed_form():
    """Nichol & Dhariwal (2021), eq. 17: alpha_bar at t (0-based) is f(t+1) / f(0)."""
    T, s_ = 1000, 0.008
    sched = schedules.make_schedule("cosine", T)

    def f(u):
        return math.cos((u + s_) / (1 + s_) * math.pi / 2) ** 2

    for t in [0, 1, 100, 500, 900, 990]:  # before the beta clip at 0.999 bites
        assert sched.alpha_bars[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-5, abs=1e-9)
    assert sched.betas.max().item() == pytest.approx(0.999, rel=1e-6)  # the clip does bite at the end


def test_small_linear_T_is_far_from_noise_but_cosine_is_not():
    """The linear range is not rescaled with T (as in diffusers), so T = 50 ends far from pure noise."""
    assert schedules.make_schedule("linear", 50).alpha_bars[-1] > 0.5
    assert schedules.make_schedule("cosine", 50).alpha_bars[-1] < 1e-4
    assert schedules.make_schedule("linear", 1000).alpha_bars[-1] < 1e-4


# ----------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("t", [5, 100, 500, 999])
def test_q_sample_empirical_moments(lin, t):
    n = 100_000
    x0 = torch.tensor([[1.0, -0.5, 0.25]]).expand(n, 3)
    xt = diffusion.q_sample(x0, t, lin, generator=gen(t))
    ab = ref_alpha_bar(lin.betas, t)
    mean, var = xt.double().mean(0), xt.double().var(0)
    expected_mean = math.sqrt(ab) * x0[0].double()
    torch.testing.assert_close(mean, expected_mean, rtol=0, atol=5 * math.sqrt((1 - ab) / n) + 1e-6)
    torch.testing.assert_close(var, torch.full((3,), 1 - ab, dtype=torch.float64), rtol=0.03, atol=0)


def test_q_sample_with_explicit_noise_is_the_formula(lin):
    g = gen(0)
    x0, eps = torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, 1, 3, 3, generator=g)
    for t in [0, 1, 250, 999]:
        ab = ref_alpha_bar(lin.betas, t)
        expected = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
        torch.testing.assert_close(diffusion.q_sample(x0, t, lin, noise=eps), expected, rtol=1e-5, atol=1e-6)


def test_q_sample_per_sample_timesteps(lin):
    g = gen(1)
    x0, eps = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    out = diffusion.q_sample(x0, t, lin, noise=eps)
    for i, ti in enumerate(t.tolist()):
        ab = ref_alpha_bar(lin.betas, ti)
        torch.testing.assert_close(out[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i], rtol=1e-5, atol=1e-6)


def test_q_sample_generator_is_reproducible(lin):
    x0 = torch.zeros(3, 4)
    a = diffusion.q_sample(x0, 300, lin, generator=gen(5))
    b = diffusion.q_sample(x0, 300, lin, generator=gen(5))
    c = diffusion.q_sample(x0, 300, lin, generator=gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def bayes_posterior(betas, x0, xt, t):
    """q(x_{t-1} | x_t, x0) from q(x_t | x_{t-1}) = N(sqrt(a_t) x_{t-1}, b_t) and
    q(x_{t-1} | x0) = N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}): multiply the Gaussians in x_{t-1}."""
    b = betas.double()[t].item()
    a = 1 - b
    ab_prev = ref_alpha_bar(betas, t - 1)
    precision = a / b + 1 / (1 - ab_prev)
    var = 1 / precision
    mean = var * (math.sqrt(a) / b * xt.double() + math.sqrt(ab_prev) / (1 - ab_prev) * x0.double())
    return mean, var


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 2, 50, 500, 998])
def test_q_posterior_matches_bayes(name, t):
    s = schedules.make_schedule(name, 1000)
    g = gen(t)
    x0, xt = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    mean, var = diffusion.q_posterior(x0, xt, t, s)
    ref_mean, ref_var = bayes_posterior(s.betas, x0, xt, t)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-4, atol=1e-5)
    assert float(var) == pytest.approx(ref_var, rel=1e-4)


def test_q_posterior_at_t0_is_x0_with_zero_variance(lin):
    g = gen(2)
    x0, xt = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    mean, var = diffusion.q_posterior(x0, xt, 0, lin)
    assert float(var) == 0.0
    torch.testing.assert_close(mean, x0, rtol=1e-6, atol=1e-6)


def test_q_posterior_per_sample_timesteps(lin):
    g = gen(3)
    x0, xt = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    t = torch.tensor([0, 7, 700])
    mean, var = diffusion.q_posterior(x0, xt, t, lin)
    assert var.shape == (3, 1)
    for i, ti in enumerate(t.tolist()):
        m_i, v_i = diffusion.q_posterior(x0[i:i + 1], xt[i:i + 1], ti, lin)
        torch.testing.assert_close(mean[i:i + 1], m_i)
        assert var[i].item() == pytest.approx(float(v_i))


# ----------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("t", [0, 10, 500, 999])
def test_predict_x0_and_eps_from_x0_invert_q_sample(cos, t):
    g = gen(t)
    x0, eps = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    for s in (cos, schedules.make_schedule("linear", 1000)):
        xt = diffusion.q_sample(x0, t, s, noise=eps)
        atol = 1e-5 / math.sqrt(ref_alpha_bar(s.betas, t))  # x0 = (...) / sqrt(alpha_bar) amplifies rounding
        torch.testing.assert_close(diffusion.predict_x0(xt, eps, t, s), x0, rtol=1e-4, atol=atol)
        torch.testing.assert_close(diffusion.eps_from_x0(xt, x0, t, s), eps, rtol=1e-4,
                                   atol=1e-5 / math.sqrt(1 - ref_alpha_bar(s.betas, t)))


@pytest.mark.parametrize("t", [3, 400, 990])
def test_v_and_score_conversions_round_trip(lin, t):
    g = gen(t)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    xt = diffusion.q_sample(x0, t, lin, noise=eps)
    v = diffusion.v_from_eps(x0, eps, t, lin)
    torch.testing.assert_close(diffusion.eps_from_v(xt, v, t, lin), eps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(diffusion.x0_from_v(xt, v, t, lin), x0, rtol=1e-4, atol=1e-5)
    score = diffusion.score_from_eps(eps, t, lin)
    torch.testing.assert_close(diffusion.eps_from_score(score, t, lin), eps, rtol=1e-5, atol=1e-6)
    # the conversions are not identities
    assert not torch.allclose(score, eps, atol=1e-3) and not torch.allclose(v, eps, atol=1e-3)


def test_v_is_the_velocity_of_the_rotation(lin):
    """With x_t = cos(phi) x0 + sin(phi) eps (phi = atan(sqrt((1 - ab) / ab))), v = dx_t / dphi
    (Salimans & Ho, 2022, Sec. 4): check against a central difference."""
    g = gen(4)
    x0, eps = torch.randn(5, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    for t in [10, 300, 800]:
        ab = ref_alpha_bar(lin.betas, t)
        phi, h = math.atan2(math.sqrt(1 - ab), math.sqrt(ab)), 1e-5

        def x_at(p):
            return math.cos(p) * x0 + math.sin(p) * eps

        dxdphi = (x_at(phi + h) - x_at(phi - h)) / (2 * h)
        torch.testing.assert_close(diffusion.v_from_eps(x0.float(), eps.float(), t, lin).double(), dxdphi,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("t", [0, 50, 500, 999])
def test_score_of_gaussian_data(lin, t):
    """x0 ~ N(0, s^2 I) gives the marginal x_t ~ N(0, (ab s^2 + 1 - ab) I), whose score is
    -x / (ab s^2 + 1 - ab); the optimal eps prediction E[eps | x_t] = sqrt(1 - ab) x / (ab s^2 + 1 - ab)."""
    s2 = 0.25
    ab = ref_alpha_bar(lin.betas, t)
    x = torch.randn(6, 3, generator=gen(t))
    marg_var = ab * s2 + 1 - ab
    eps_mean = math.sqrt(1 - ab) * x / marg_var
    torch.testing.assert_close(diffusion.score_from_eps(eps_mean, t, lin), -x / marg_var, rtol=1e-5, atol=1e-6)
    # and with unit-variance data the marginal is N(0, I) at every t: the score is -x
    torch.testing.assert_close(diffusion.score_from_eps(math.sqrt(1 - ab) * x, t, lin), -x, rtol=1e-5, atol=1e-6)


def test_optimal_eps_is_the_posterior_mean_of_the_noise(lin):
    """Monte Carlo check of E[eps | x_t] for Gaussian data: regress eps on x_t over many samples."""
    t, n, s = 300, 200_000, 0.5
    ab = ref_alpha_bar(lin.betas, t)
    g = gen(8)
    x0 = s * torch.randn(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    slope = (eps * xt).mean() / (xt * xt).mean()
    assert slope.item() == pytest.approx(math.sqrt(1 - ab) / (ab * s**2 + 1 - ab), rel=0.02)


# ----------------------------------------------------------------------------- DDPM / DDIM steps


def test_ddpm_step_is_posterior_mean_plus_posterior_noise(lin):
    """ddpm_step = mean of q(x_{t-1} | x_t, x0_hat) + its std * z (Ho et al., 2020, Algorithm 2)."""
    g = gen(9)
    x, eps, z = (torch.randn(3, 1, 4, 4, generator=g) for _ in range(3))
    for t in [1, 37, 600, 999]:
        x0_hat = (x.double() - math.sqrt(1 - ref_alpha_bar(lin.betas, t)) * eps.double()) / math.sqrt(
            ref_alpha_bar(lin.betas, t))
        mean, var = bayes_posterior(lin.betas, x0_hat, x, t)
        got = samplers.ddpm_step(x, eps, t, t - 1, lin, noise=z)
        torch.testing.assert_close(got.double(), mean + math.sqrt(var) * z.double(), rtol=1e-4, atol=1e-5)


def test_ddpm_step_at_t0_returns_x0_hat_without_noise(lin):
    g = gen(10)
    x, eps = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    a = samplers.ddpm_step(x, eps, 0, -1, lin, generator=gen(1))
    b = samplers.ddpm_step(x, eps, 0, -1, lin, generator=gen(2))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, diffusion.predict_x0(x, eps, 0, lin))
    clipped = samplers.ddpm_step(3 * x, eps, 0, -1, lin, clip_x0=True)
    assert clipped.abs().max().item() == pytest.approx(1.0, abs=1e-6)  # x0_hat reached +-1 and was clipped


@pytest.mark.parametrize("t,t_prev", [(999, 899), (500, 480), (10, 9), (1, 0), (5, -1)])
def test_ddim_step_follows_a_consistent_noise_exactly(cos, t, t_prev):
    """If x_t = q_sample(x0, t, eps) and the model returns that same eps, deterministic DDIM lands
    exactly on q_sample(x0, t_prev, eps) (Song et al., 2021, eq. 12), and on x0 at t_prev = -1."""
    g = gen(t)
    x0, eps = torch.randn(2, 1, 4, 4, generator=g).clamp(-1, 1), torch.randn(2, 1, 4, 4, generator=g)
    xt = diffusion.q_sample(x0, t, cos, noise=eps)
    got = samplers.ddim_step(xt, eps, t, t_prev, cos, eta=0.0)
    ab_prev = ref_alpha_bar(cos.betas, t_prev)
    expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    atol = 2e-5 / math.sqrt(ref_alpha_bar(cos.betas, t))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("t,t_prev", [(999, 998), (400, 399), (2, 1), (1, 0), (500, 450), (60, 0), (30, -1)])
@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta1_equals_ddpm_step(name, t, t_prev, clip):
    """eta = 1 gives sigma^2 equal to the posterior variance, and the same mean: the same step.
    With clipping too, since ddim_step re-derives eps from the clipped x0_hat."""
    s = schedules.make_schedule(name, 1000)
    g = gen(t)
    x, eps, z = (2 * torch.randn(2, 2, 3, 3, generator=g) for _ in range(3))
    a = samplers.ddim_step(x, eps, t, t_prev, s, eta=1.0, noise=z / 2, clip_x0=clip)
    b = samplers.ddpm_step(x, eps, t, t_prev, s, noise=z / 2, clip_x0=clip)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # ... but not with eta = 0 (unless there is no noise left to add)
    if t_prev >= 0:
        c = samplers.ddim_step(x, eps, t, t_prev, s, eta=0.0)
        assert (c - b).abs().max() > 1e-3


def toy_model(x, t):
    return 0.1 * x + 0.001 * t.float().reshape(-1, *([1] * (x.ndim - 1)))


def test_ddim_all_steps_eta1_equals_full_ddpm_sampling():
    s = schedules.make_schedule("cosine", 60)
    shape = (3, 1, 4, 4)
    a = samplers.ddim_sample(toy_model, shape, s, steps=60, eta=1.0, spacing="leading", generator=gen(4))
    b = samplers.ddpm_sample(toy_model, shape, s, generator=gen(4))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    c = samplers.ddim_sample(toy_model, shape, s, steps=60, eta=0.0, generator=gen(4))
    assert (a - c).abs().max() > 1e-2


def test_ddim_eta0_is_deterministic_eta_positive_is_not(lin):
    shape = (2, 1, 4, 4)
    x_T = torch.randn(shape, generator=gen(0))
    a = samplers.ddim_sample(toy_model, shape, lin, steps=10, eta=0.0, x_T=x_T, generator=gen(1))
    b = samplers.ddim_sample(toy_model, shape, lin, steps=10, eta=0.0, x_T=x_T.clone(), generator=gen(2))
    assert torch.equal(a, b)
    c = samplers.ddim_sample(toy_model, shape, lin, steps=10, eta=0.5, x_T=x_T, generator=gen(1))
    d = samplers.ddim_sample(toy_model, shape, lin, steps=10, eta=0.5, x_T=x_T, generator=gen(2))
    e = samplers.ddim_sample(toy_model, shape, lin, steps=10, eta=0.5, x_T=x_T, generator=gen(1))
    assert (c - d).abs().max() > 1e-2
    assert torch.equal(c, e)
    # without x_T the generator also draws the start
    f = samplers.ddim_sample(toy_model, shape, lin, steps=10, generator=gen(1))
    h = samplers.ddim_sample(toy_model, shape, lin, steps=10, generator=gen(2))
    assert (f - h).abs().max() > 1e-2


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_callback_sees_every_step_in_order(lin, spacing):
    seen = []
    out = samplers.ddim_sample(toy_model, (2, 3), lin, steps=7, spacing=spacing, generator=gen(0),
                               callback=seen.append)
    expected_t = samplers.ddim_timesteps(1000, 7, spacing).tolist()
    assert [s.i for s in seen] == list(range(7))
    assert [s.t for s in seen] == expected_t
    assert all(a > b for a, b in zip(expected_t, expected_t[1:]))
    assert [s.t_prev for s in seen] == expected_t[1:] + [-1]
    for a, b in zip(seen, seen[1:]):
        assert torch.equal(a.x_prev, b.x_t)
    assert torch.equal(seen[-1].x_prev, out)
    s0 = seen[0]
    eps = toy_model(s0.x_t, torch.full((2,), s0.t))
    torch.testing.assert_close(s0.x0_hat, diffusion.predict_x0(s0.x_t, eps, s0.t, lin))


def test_ddpm_sample_callback_visits_every_timestep():
    s = schedules.make_schedule("linear", 40)
    seen = []
    samplers.ddpm_sample(toy_model, (2, 2), s, generator=gen(0), callback=seen.append)
    assert [st.t for st in seen] == list(range(39, -1, -1))
    assert [st.t_prev for st in seen] == list(range(38, -1, -1)) + [-1]
    assert [st.i for st in seen] == list(range(40))


def mixture_eps_model(schedule, std=0.1):
    """The exact optimal eps for the 'mixture' toy data: -sqrt(1 - ab) * score of the noised mixture."""
    means = data.mixture_means().double()
    ab_all = torch.cumprod(1 - schedule.betas.double(), 0)

    def model(x, t):
        ab = ab_all[t].reshape(-1, 1)
        mu = ab.sqrt()[:, None] * means[None]  # (B, K, 2)
        var = ab * std**2 + 1 - ab  # (B, 1)
        w = torch.softmax(-((x.double()[:, None] - mu) ** 2).sum(-1) / (2 * var), dim=1)  # (B, K)
        score = (w[..., None] * (mu - x.double()[:, None])).sum(1) / var
        return (-(1 - ab).sqrt() * score).float()

    return model


@pytest.mark.parametrize("sampler", ["ddpm-all-cosine-200", "ddpm-100-of-1000", "ddim-50", "ddim-50-trailing"])
def test_samplers_with_the_exact_score_reproduce_the_data(sampler):
    """With the analytic eps of the mixture, each sampler must put its samples on the mixture:
    the mean distance to the nearest centre is ~0.125 for the data (std 0.1 in 2-D)."""
    s = schedules.make_schedule("cosine", 200) if "cosine" in sampler else schedules.make_schedule("linear", 1000)
    model, g, shape = mixture_eps_model(s), gen(1), (320, 2)
    if sampler.startswith("ddpm"):
        x = samplers.ddpm_sample(model, shape, s, steps=None if "all" in sampler else 100, generator=g)
    else:
        x = samplers.ddim_sample(model, shape, s, steps=50, generator=g,
                                 spacing="trailing" if sampler.endswith("trailing") else "leading")
    dist = torch.cdist(x, data.mixture_means()).min(1).values
    assert 0.07 < dist.mean().item() < 0.18
    counts = torch.bincount(torch.cdist(x, data.mixture_means()).argmin(1), minlength=8)
    assert counts.min() > 15  # every mode is found (320 / 8 = 40 expected)


# ----------------------------------------------------------------------------- guidance


class CountingConditional:
    """eps = x + 0.1 (y + 1), with the null label giving eps = x; counts its calls and batch sizes."""

    def __init__(self, null_class=10):
        self.null_class, self.calls = null_class, []

    def __call__(self, x, t, y):
        self.calls.append((x.shape[0], t.clone(), y.clone()))
        offset = torch.where(y == self.null_class, torch.zeros_like(y), y + 1).float() * 0.1
        return x + offset.reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_classifier_free_guidance_weights(w):
    model = CountingConditional()
    y = torch.tensor([0, 3, 9])
    guided = guidance.classifier_free(model, y, w, null_class=10)
    x = torch.randn(3, 1, 4, 4, generator=gen(0))
    out = guided(x, torch.full((3,), 500))
    uncond, cond = x, x + 0.1 * (y + 1).float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, uncond + w * (cond - uncond))
    if w == 0:
        torch.testing.assert_close(out, uncond)
    if w == 1:
        torch.testing.assert_close(out, cond)
    if w == 3:  # linear extrapolation past the conditional prediction
        torch.testing.assert_close(out - cond, 2 * (cond - uncond))


def test_classifier_free_guidance_one_call_of_2B_per_step():
    model = CountingConditional()
    s = schedules.make_schedule("linear", 100)
    guided = guidance.classifier_free(model, 4, 2.0, null_class=10)  # a scalar label for the whole batch
    samplers.ddim_sample(guided, (5, 1, 4, 4), s, steps=6, generator=gen(0))
    assert len(model.calls) == 6
    for (batch, t, y), t_expected in zip(model.calls, samplers.ddim_timesteps(100, 6).tolist()):
        assert batch == 10
        assert t.tolist() == [t_expected] * 10
        assert y.tolist() == [4] * 5 + [10] * 5


def test_classifier_guidance_adds_the_scaled_gradient(lin):
    """A two-class 'classifier' with logits [a . x, 0]: d/dx log p(0 | x) = (1 - p0) a, in closed form."""
    a = torch.tensor([0.5, -1.0])

    def classifier(x, t):
        return torch.stack([x @ a, torch.zeros(x.shape[0])], dim=1)

    def model(x, t):
        return 0.3 * x

    x = torch.randn(4, 2, generator=gen(0))
    t = torch.full((4,), 700)
    out = guidance.classifier_guided(model, classifier, 0, 2.0, lin)(x, t)
    p0 = torch.sigmoid(x @ a)[:, None]
    expected = 0.3 * x - 2.0 * math.sqrt(1 - ref_alpha_bar(lin.betas, 700)) * (1 - p0) * a
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- nets


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = nets.UNet(num_classes=10).eval()
    with torch.no_grad():  # the output conv starts at zero; give it weights so outputs depend on inputs
        model.conv_out.weight.normal_(0, 0.05)
    return model


def test_unet_shapes_and_labels(unet):
    x = torch.randn(2, 1, 16, 16, generator=gen(0))  # any size divisible by 4 works; 16x16 is faster
    t = torch.tensor([3, 900])
    with torch.no_grad():
        out_none = unet(x, t)
        out_null = unet(x, t, torch.tensor([10, 10]))
        out_y = unet(x, t, torch.tensor([3, 7]))
        out_t = unet(x, torch.tensor([4, 900]), torch.tensor([3, 7]))
        out_scalar_t = unet(x, 900, torch.tensor([3, 7]))
    assert out_none.shape == x.shape and out_y.shape == x.shape
    assert torch.equal(out_none, out_null)
    assert (out_y - out_null).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # labels matter for each image
    assert (out_t[0] - out_y[0]).abs().max() > 1e-5 and torch.equal(out_t[1], out_y[1])  # t is per image
    assert torch.equal(out_scalar_t[1], out_y[1])


@pytest.mark.parametrize("bad", [[-1, 0], [0, 11], [12, 3]])
def test_unet_rejects_bad_labels(unet, bad):
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.10"):
        unet(torch.zeros(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor(bad))


def test_unconditional_unet_takes_no_labels():
    model = nets.UNet(channels=(8, 16), blocks=1)
    assert model(torch.zeros(2, 1, 16, 16), torch.tensor([0, 5])).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="without num_classes"):
        model(torch.zeros(2, 1, 16, 16), torch.tensor([0, 5]), torch.tensor([1, 2]))


def test_unet_size_and_other_shapes():
    n = nets.count_parameters(nets.UNet(num_classes=10))
    assert 500_000 <= n <= 3_000_000
    small = nets.UNet(in_channels=3, channels=(8, 16, 16), blocks=2)
    assert small(torch.zeros(2, 3, 16, 16), torch.tensor([0, 1])).shape == (2, 3, 16, 16)


def test_timestep_embedding():
    t = torch.tensor([0, 1, 2, 500, 999])
    emb = nets.timestep_embedding(t, 32)
    assert emb.shape == (5, 32)
    # t = 0: cos(0) = 1 in the first half, sin(0) = 0 in the second
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(16), torch.zeros(16)]))
    # highest frequency is 1 rad per step: entry 0 is cos(t), entry 16 is sin(t)
    torch.testing.assert_close(emb[:, 0], torch.cos(t.float()))
    torch.testing.assert_close(emb[:, 16], torch.sin(t.float()))
    # lowest frequency 10000^(-15/16)
    torch.testing.assert_close(emb[3, 15], torch.cos(torch.tensor(500 * 10_000 ** (-15 / 16))))
    d = torch.cdist(emb, emb)
    assert (d + torch.eye(5) * 1e9).min() > 1e-2  # all different
    assert emb.abs().max() <= 1


# ----------------------------------------------------------------------------- training


def test_mlp_denoiser_learns_the_mixture():
    # T = 100 with the linear range scaled by 1000 / T (betas 1e-3 .. 0.2), so that x_{T-1} is pure
    # noise (alpha_bar ~ 2e-5). With the unscaled 1e-4 .. 0.02 range at T = 100, alpha_bar_{T-1} = 0.36:
    # the loss is dominated by near-clean steps and only falls by ~25% in 400 steps.
    s = schedules.make_schedule("linear", 100, beta_start=1e-3, beta_end=0.2)
    points = data.make_toy("mixture", 2000, generator=gen(0))
    result = train.train(nets.MLPDenoiser(), train.diffusion_loss(s), points, steps=400, device="cpu",
                         progress=False)
    assert len(result.losses) == 400
    first, last = sum(result.losses[:50]) / 50, sum(result.losses[-50:]) / 50
    assert last < 0.7 * first

    centres = data.mixture_means()

    def mean_distance(model):
        x = samplers.ddpm_sample(model, (500, 2), s, generator=gen(1))
        assert x.shape == (500, 2)
        return torch.cdist(x, centres).min(1).values.mean().nan_to_num(nan=math.inf).item()

    # measured: ~0.6-0.7 after 400 steps (the data: 0.12; an MLP this short-trained is still blurry at
    # small t), an untrained MLP ~1.4 or worse, eps = 0 ~1.4
    assert mean_distance(result.ema) < 0.9
    torch.manual_seed(1)
    assert mean_distance(nets.MLPDenoiser().eval()) > 0.9
    assert mean_distance(lambda x, t: torch.zeros_like(x)) > 0.9


# ----------------------------------------------------------------------------- pretrained


INFO = {"kind": "unet", "config": {"channels": [16, 32, 64], "blocks": 1, "num_classes": 10},
        "image_shape": [1, 32, 32], "null_class": 10, "schedule": {"name": "linear", "T": 1000}}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = nets.UNet(channels=(16, 32, 64), blocks=1, num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # nonzero output conv, and weights not round in float16
    path = pretrained.save("tiny-unet", model, INFO, folder=tmp_path)
    return model, path


def test_pretrained_round_trip(saved, tmp_path):
    model, path = saved
    assert path == tmp_path / "tiny-unet.pt" and path.exists()
    assert pretrained.available(tmp_path) == ["tiny-unet"]
    loaded = pretrained.load("tiny-unet", folder=tmp_path)
    assert loaded.image_shape == (1, 32, 32) and loaded.null_class == 10
    assert loaded.schedule.T == 1000
    torch.testing.assert_close(loaded.schedule.alpha_bars, schedules.make_schedule("linear", 1000).alpha_bars)
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in loaded.model.parameters())
    x, t, y = torch.randn(2, 1, 16, 16, generator=gen(0)), torch.tensor([10, 800]), torch.tensor([3, 10])
    with torch.no_grad():
        want, got = model(x, t, y), loaded.model(x, t, y)
        # the same network with its weights rounded to float16 gives exactly the loaded outputs
        rounded = nets.UNet(channels=(16, 32, 64), blocks=1, num_classes=10).eval()
        rounded.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        torch.testing.assert_close(got, rounded(x, t, y), rtol=0, atol=0)
    assert want.abs().max() > 1e-2
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3 * want.abs().max().item())


def test_pretrained_tampered_file_is_refused(saved, tmp_path):
    _, path = saved
    entry = json.loads((tmp_path / "manifest.json").read_text())["tiny-unet"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=re.escape(entry["sha256"])) as err:
        pretrained.load("tiny-unet", folder=tmp_path)
    assert str(path) in str(err.value)


def test_pretrained_missing_file(saved, tmp_path):
    _, path = saved
    sha = json.loads((tmp_path / "manifest.json").read_text())["tiny-unet"]["sha256"]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(sha)) as err:
        pretrained.load("tiny-unet", folder=tmp_path)
    assert "tiny-unet.pt" in str(err.value)


def test_pretrained_unknown_name_lists_the_available_ones(saved, tmp_path):
    model, _ = saved
    pretrained.save("other-unet", model, INFO, folder=tmp_path)
    with pytest.raises(ValueError, match="no-such-model") as err:
        pretrained.load("no-such-model", folder=tmp_path)
    assert "tiny-unet" in str(err.value) and "other-unet" in str(err.value)
