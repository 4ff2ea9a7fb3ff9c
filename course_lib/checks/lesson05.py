"""Checks for lesson 05 (the score view): the score of a Gaussian mixture, the exact epsilon of a noised
mixture, annealed Langevin dynamics in Song & Ermon's convention, one Heun step of the probability-flow
ODE, and the widget question "the largest stable Langevin step size".

Each check runs the learner's function on small inputs and compares its *behaviour* with
:mod:`course_lib.score` (the reference). When the result is wrong, the check also computes the usual
mistakes (a wrong sign, a missing square root, the other Langevin convention, ...) and, if the learner's
result matches one of them, its hint names that mistake.
"""

import math

import torch

from ..schedules import make_schedule
from ..score import GaussianMixture, annealed_langevin, exact_eps, langevin, mode_weights, ode_sigmas
from . import _close, diagnose, expect_tensor, fail, passed


def _toy():
    """Song & Ermon's (2019) toy density: 1/5 N((-5,-5), I) + 4/5 N((5,5), I)."""
    return GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8])


# ----------------------------------------------------------------------------------------------
# Exercise 5.1: the score of a Gaussian mixture
# ----------------------------------------------------------------------------------------------

def _score_variants(x, means, stds, weights):
    """The reference score and the usual wrong ones, all (N, D) float64."""
    x = x.double()
    diff = means.unsqueeze(0) - x.unsqueeze(1)  # (N, K, D)
    var = stds**2
    D = x.shape[1]
    sq = diff.pow(2).sum(-1)  # (N, K)
    logn = -0.5 * sq / var - 0.5 * D * torch.log(2 * math.pi * var)  # log N_k(x)
    r = torch.softmax(weights.log() + logn, dim=1)
    good = (r.unsqueeze(-1) * diff / var[:, None]).sum(1)
    r_no_w = torch.softmax(logn, dim=1)
    r_no_norm = torch.softmax(weights.log() - 0.5 * sq / var, dim=1)
    unnormalised = ((weights * logn.exp()).unsqueeze(-1) * diff / var[:, None]).sum(1)
    return good, [
        (-good, "wrong sign of the score: grad log p points TOWARDS the data, so each component pulls "
                "with (mu_k - x) / s_k^2, not (x - mu_k) / s_k^2"),
        ((r.unsqueeze(-1) * diff / stds[:, None]).sum(1),
         "divide by the variance s_k^2, not by the std s_k: grad log N(x; mu, s^2 I) = (mu - x) / s^2"),
        ((r_no_w.unsqueeze(-1) * diff / var[:, None]).sum(1),
         "the responsibilities r_k = w_k N_k(x) / sum_j w_j N_j(x) need the weights w_k"),
        ((r_no_norm.unsqueeze(-1) * diff / var[:, None]).sum(1),
         "the normalising constant (2 pi s_k^2)^(-D/2) of each Gaussian does not cancel when the stds differ: "
         "keep the -D/2 log(2 pi s_k^2) term in log N_k"),
        (unnormalised, "that is grad p(x), not grad log p(x): divide by p(x) (the responsibilities must sum to 1)"),
    ]


def check_mixture_score(mixture_score_fn):
    """``mixture_score_fn(x, means, stds, weights)`` -> grad_x log p(x), (N, D), against the closed form,
    autograd, and points far from the data (where a naive exp underflows)."""
    ex = "5.1"
    g = torch.Generator().manual_seed(51)
    hint = ("grad log p(x) = sum_k r_k(x) (mu_k - x) / s_k^2 with r_k = w_k N(x; mu_k, s_k^2 I) / p(x); "
            "compute the r_k with torch.softmax over the components of log w_k + log N_k(x)")
    for D, K in ((2, 3), (3, 2), (1, 4)):
        means = 2 * torch.randn((K, D), generator=g, dtype=torch.float64)
        stds = torch.tensor([0.5, 1.0, 2.0, 0.7][:K], dtype=torch.float64)
        weights = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
        x = 2 * torch.randn((20, D), generator=g, dtype=torch.float64)
        out = mixture_score_fn(x, means, stds, weights)
        expect_tensor(ex, out, (20, D), f"mixture_score on (20, {D}) points")
        good, mistakes = _score_variants(x, means, stds, weights)
        diagnose(ex, out, good, mistakes, f"mixture_score (K = {K}, D = {D})", hint)
        # the same as autograd of log p
        xg = x.clone().requires_grad_(True)
        GaussianMixture(means, stds, weights).log_prob(xg).sum().backward()
        if not _close(out, xg.grad):
            fail(ex, "your score differs from autograd of log p", hint)
    # far from the data: densities underflow to 0 in exp(), log-space does not
    means = torch.tensor([[-5.0, -5.0], [5.0, 5.0]], dtype=torch.float64)
    stds = torch.tensor([0.5, 0.5], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.8], dtype=torch.float64)
    far = torch.tensor([[40.0, 40.0], [-60.0, 10.0]], dtype=torch.float64)
    out = mixture_score_fn(far, means, stds, weights)
    if not (isinstance(out, torch.Tensor) and torch.isfinite(out).all()):
        fail(ex, "at points far from the data, e.g. (40, 40), your score is NaN or inf",
             "exp(-|x - mu|^2 / (2 s^2)) underflows to 0 there and 0 / 0 = NaN: compute the responsibilities "
             "in log space (torch.softmax of log w_k + log N_k)")
    diagnose(ex, out, _score_variants(far, means, stds, weights)[0], [], "mixture_score far from the data", hint)
    passed(ex, "your score matches the closed form and autograd in 1, 2 and 3 dimensions, also far from the data.")


# ----------------------------------------------------------------------------------------------
# Exercise 5.2: epsilon from the score of the noised mixture
# ----------------------------------------------------------------------------------------------

def check_mixture_eps(mixture_eps_fn):
    """``mixture_eps_fn(mixture, x_t, t, schedule)`` -> the exact eps = -sqrt(1 - alpha_bar_t) * score of
    ``mixture.noised(alpha_bar_t)`` at x_t, for an int ``t``."""
    ex = "5.2"
    schedule = make_schedule("linear", 1000)
    mix = GaussianMixture([[-1.0, 0.5], [1.5, -1.0], [0.0, 2.0]], [0.3, 0.6, 0.4], [0.3, 0.5, 0.2])
    x_t = 1.5 * torch.randn((16, 2), generator=torch.Generator().manual_seed(52), dtype=torch.float64)
    ab_all, a_all = schedule.alpha_bars.double(), schedule.alphas.double()
    hint = ("eps = -sqrt(1 - alpha_bar_t) * grad log p_t(x_t) with p_t = mixture.noised(alpha_bar_t), "
            "alpha_bar_t = schedule.alpha_bars[t] (Tweedie / Vincent, 2011)")
    for t in (0, 50, 300, 999):
        out = mixture_eps_fn(mix, x_t, t, schedule)
        expect_tensor(ex, out, x_t.shape, f"eps at t = {t}")
        ab = ab_all[t].item()
        score_t = mix.noised(ab).score(x_t)
        good = exact_eps(mix, schedule)(x_t, t).double()
        ab_wrong = a_all[t].item()
        mistakes = [
            (math.sqrt(1 - ab) * score_t, "wrong sign: eps = MINUS sqrt(1 - alpha_bar_t) times the score "
                                          "(the noise points away from the data, the score towards it)"),
            (-(1 - ab) * score_t, "missing sqrt: eps = -sqrt(1 - alpha_bar_t) * score, the noise's STD, not its variance"),
            (-math.sqrt(1 - ab) * mix.score(x_t), "that is the score of the CLEAN mixture: x_t follows "
                                                  "mixture.noised(alpha_bar_t), whose score you need"),
            (-math.sqrt(1 - ab) * mix.perturbed(math.sqrt(1 - ab)).score(x_t),
             "perturbed(sigma) is x + sigma z without the sqrt(alpha_bar) shrink of the means: use "
             "mixture.noised(alpha_bar_t) for DDPM's x_t"),
            (-math.sqrt(1 - ab_wrong) * mix.noised(ab_wrong).score(x_t),
             "wrong sigma at t: use the cumulative alpha_bar_t = schedule.alpha_bars[t], not alpha_t = schedule.alphas[t]"),
        ]
        if t > 0:
            ab_prev = ab_all[t - 1].item()
            mistakes.append((-math.sqrt(1 - ab_prev) * mix.noised(ab_prev).score(x_t),
                             "wrong sigma at t: an off-by-one, alpha_bar_{t-1} instead of alpha_bar_t = schedule.alpha_bars[t]"))
        diagnose(ex, out, good, mistakes, f"eps at t = {t}", hint)
    passed(ex, "your eps is the exact E[eps | x_t] of the noised mixture at t = 0, 50, 300 and 999.")


# ----------------------------------------------------------------------------------------------
# Exercise 5.3: annealed Langevin dynamics (Song & Ermon, 2019, Algorithm 1)
# ----------------------------------------------------------------------------------------------

def _annealed_variant(score_fn, x, sigmas, step_size, steps_per_level, generator, kind):
    """Reference annealed Langevin ("good") or one of the usual wrong ones, drawing noise like the reference."""
    sigmas = [float(s) for s in sigmas]
    z_once = None
    for i, sigma in enumerate(sigmas):
        ref_sigma = sigmas[0] if kind == "sigma_1" else sigmas[-1]
        alpha = step_size * sigma**2 / ref_sigma**2
        z_level = None
        for _ in range(steps_per_level):
            if kind == "reuse_all":
                z_once = z_once if z_once is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype)
                z = z_once
            elif kind == "reuse_level":
                z_level = z_level if z_level is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype)
                z = z_level
            else:
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            s = score_fn(x, sigma)
            if kind == "code":  # x + alpha s + sqrt(2 alpha) z: the image code's form with the paper's alpha
                x = x + alpha * s + math.sqrt(2 * alpha) * z
            elif kind == "full_drift":
                x = x + alpha * s + math.sqrt(alpha) * z
            elif kind == "no_sqrt":
                x = x + alpha / 2 * s + alpha * z
            else:
                x = x + alpha / 2 * s + math.sqrt(alpha) * z
    return x


_ANNEALED_MISTAKES = {
    "code": "alpha vs alpha/2 convention mix-up: you used the NCSN code's form x + a s + sqrt(2a) z with the paper's "
            "alpha_i. In the paper's Algorithm 1 the update is x + (alpha_i / 2) s + sqrt(alpha_i) z (a = alpha_i / 2)",
    "full_drift": "alpha vs alpha/2 convention mix-up: the drift is (alpha_i / 2) * score, half the step, when the noise "
                  "is sqrt(alpha_i) z",
    "sigma_1": "alpha_i = eps * sigma_i^2 / sigma_L^2 with sigma_L the SMALLEST (last) noise level, not sigma_1: "
               "the step shrinks to eps at the last level",
    "no_sqrt": "missing sqrt: the noise term is sqrt(alpha_i) * z, not alpha_i * z",
    "reuse_all": "reused noise draw: draw a fresh z = torch.randn(x.shape, generator=generator) at EVERY step",
    "reuse_level": "reused noise draw: a fresh z at every step, not once per noise level",
}


def check_annealed_langevin(annealed_langevin_fn):
    """``annealed_langevin_fn(score_fn, x, sigmas, step_size, steps_per_level, generator=None)`` against
    ``score.annealed_langevin`` (same generator draws), Song & Ermon's toy, and a ValueError for
    sigmas that are not strictly decreasing."""
    ex = "5.3"
    mix = _toy()

    def score_fn(x, sigma):
        return mix.perturbed(sigma).score(x)

    hint = ("Algorithm 1 of Song & Ermon (2019): for each sigma_i (largest first), alpha_i = eps * sigma_i^2 / sigma_L^2; "
            "then steps_per_level times: z = torch.randn(x.shape, generator=generator), "
            "x = x + alpha_i / 2 * score_fn(x, sigma_i) + sqrt(alpha_i) * z")
    # 1. bad noise levels must be refused
    try:
        annealed_langevin_fn(score_fn, torch.zeros((4, 2)), [1.0, 2.0, 4.0], 0.1, 2)
    except ValueError:
        pass
    else:
        fail(ex, "sigmas = [1, 2, 4] (increasing) ran without complaint",
             "missing ValueError: raise ValueError when sigmas are not strictly decreasing (largest first), "
             "e.g. if any(later >= earlier ...)")
    # 2. the same draws as the reference
    x = torch.rand((64, 2), generator=torch.Generator().manual_seed(53)) * 16 - 8
    sigmas, step, per_level = [20.0, 6.0, 2.0, 1.0], 0.05, 3
    out = annealed_langevin_fn(score_fn, x.clone(), sigmas, step, per_level, generator=torch.Generator().manual_seed(7))
    expect_tensor(ex, out, x.shape, "annealed_langevin on (64, 2) points")
    good = annealed_langevin(score_fn, x.clone(), sigmas, step, per_level, generator=torch.Generator().manual_seed(7))
    if _close(out, good, atol=1e-4):
        passed(ex, "your sampler matches Algorithm 1 draw for draw, and refuses increasing sigmas.")
        return
    for kind, mistake in _ANNEALED_MISTAKES.items():
        wrong = _annealed_variant(score_fn, x.clone(), sigmas, step, per_level, torch.Generator().manual_seed(7), kind)
        if _close(out, wrong, atol=1e-4):
            fail(ex, "your samples match a common mistake", mistake)
    # 3. other noise draws (e.g. not from `generator`): judge by the result on Song & Ermon's toy
    x = torch.rand((2000, 2), generator=torch.Generator().manual_seed(54)) * 16 - 8
    levels = torch.logspace(math.log10(20), 0, 10).tolist()
    out = annealed_langevin_fn(score_fn, x, levels, 0.1, 100, generator=torch.Generator().manual_seed(8))
    expect_tensor(ex, out, x.shape, "annealed_langevin on Song & Ermon's toy")
    w = mode_weights(mix, out)[1].item()
    near = out - mix.means[(out[:, 0] + out[:, 1] > 0).long()].float()
    spread = near.std().item()
    target = math.sqrt(1 + levels[-1] ** 2)  # the samples follow the data perturbed at the last level, sigma_L = 1
    if abs(w - 0.8) > 0.05 or abs(spread - target) > 0.1:
        fail(ex, f"on 1/5 N((-5,-5), I) + 4/5 N((5,5), I) your samples put {w:.3f} in the (5,5) mode (expected 0.8) "
                 f"with a spread of {spread:.3f} around the modes (expected sqrt(1 + sigma_L^2) = {target:.3f})", hint)
    passed(ex, f"your draws differ from the reference (use generator= for reproducible runs), but the samples are right: "
               f"mode weight {w:.3f} (true 0.8), spread {spread:.3f} (that of the data perturbed at sigma_L: {target:.3f}).")


# ----------------------------------------------------------------------------------------------
# Exercise 5.4: one Heun step of the probability-flow ODE (Karras et al., 2022, Algorithm 1)
# ----------------------------------------------------------------------------------------------

def heun_step_reference(model, x, t, t_next, schedule):
    """One step of Karras et al.'s Algorithm 1 in sigma = sqrt((1 - alpha_bar) / alpha_bar), y = x / sqrt(alpha_bar):
    Euler to sigma_next, then (unless sigma_next = 0, t_next = -1) the average of the slopes at both ends.
    Returns x at ``t_next`` (the clean x_0 when t_next = -1)."""
    alpha_bar, sigmas = schedule.alpha_bars.double(), ode_sigmas(schedule)
    sigma = sigmas[t]
    ab_next = alpha_bar[t_next] if t_next >= 0 else torch.tensor(1.0, dtype=torch.float64)
    sigma_next = sigmas[t_next] if t_next >= 0 else torch.tensor(0.0, dtype=torch.float64)
    y = x.double() / alpha_bar[t].sqrt()
    d = model(x, torch.full((x.shape[0],), t, dtype=torch.long)).double()
    y_next = y + (sigma_next - sigma) * d
    if t_next >= 0:
        d_next = model((ab_next.sqrt() * y_next).to(x.dtype), torch.full((x.shape[0],), t_next, dtype=torch.long)).double()
        y_next = y + (sigma_next - sigma) * (d + d_next) / 2
    return (ab_next.sqrt() * y_next).to(x.dtype)


def _heun_variants(model, x, t, t_next, schedule):
    alpha_bar = schedule.alpha_bars.double()
    ab = alpha_bar[t]
    ab_next = alpha_bar[t_next] if t_next >= 0 else torch.tensor(1.0, dtype=torch.float64)
    sig, sig_next = ((1 - ab) / ab).sqrt(), ((1 - ab_next) / ab_next).sqrt()
    tb = torch.full((x.shape[0],), t, dtype=torch.long)
    d = model(x, tb).double()
    y = x.double() / ab.sqrt()
    euler = ab_next.sqrt() * (y + (sig_next - sig) * d)
    out = [(euler, "that is an Euler step (= DDIM): Heun evaluates eps again at the Euler step's end point "
                   "(x at t_next) and moves with the AVERAGE of the two slopes")]
    if t_next < 0:
        d2 = model(euler.to(x.dtype), torch.zeros_like(tb)).double()
        out.append((y + (0 - sig) * (d + d2) / 2,
                    "Heun correction applied at the last step: to sigma = 0 (t_next = -1) take a plain Euler step "
                    "(Karras et al., 2022, Algorithm 1, line 'if sigma_{i+1} != 0')"))
    # wrong sigma at t: sqrt(1 - alpha_bar) (the std of the noise in x) instead of sqrt((1 - alpha_bar) / alpha_bar)
    s_w, s_w_next = (1 - ab).sqrt(), (1 - ab_next).sqrt()
    y_e = y + (s_w_next - s_w) * d
    if t_next >= 0:
        d2 = model((ab_next.sqrt() * y_e).to(x.dtype), torch.full_like(tb, t_next)).double()
        y_e = y + (s_w_next - s_w) * (d + d2) / 2
    out.append((ab_next.sqrt() * y_e, "wrong sigma at t: the ODE's sigma is sqrt((1 - alpha_bar) / alpha_bar), the noise "
                                      "level of y = x / sqrt(alpha_bar), not sqrt(1 - alpha_bar)"))
    # stepping x itself instead of y = x / sqrt(alpha_bar)
    x_e = x.double() + (sig_next - sig) * d
    if t_next >= 0:
        d2 = model(x_e.to(x.dtype), torch.full_like(tb, t_next)).double()
        x_e = x.double() + (sig_next - sig) * (d + d2) / 2
    out.append((x_e, "dy/dsigma = eps holds for y = x / sqrt(alpha_bar): divide x by sqrt(alpha_bar_t) before the step "
                     "and multiply by sqrt(alpha_bar_{t_next}) after it"))
    return out


def check_heun_step(heun_step_fn):
    """``heun_step_fn(model, x, t, t_next, schedule)`` against Karras et al.'s Algorithm 1, on the exact model
    of a 2-D mixture; also counts the network evaluations (2 per step, 1 on the last step)."""
    ex = "5.4"
    schedule = make_schedule("linear", 1000)
    mix = GaussianMixture([[-1.0, 0.5], [1.5, -1.0]], [0.3, 0.5], [0.4, 0.6])
    exact = exact_eps(mix, schedule)
    calls = []

    def model(x, t):
        calls.append(t)
        return exact(x, t)

    hint = ("in y = x / sqrt(alpha_bar_t), sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): d = eps(x, t); "
            "y_E = y + (sigma_next - sigma) d; if t_next >= 0: d' = eps(sqrt(alpha_bar_next) y_E, t_next) and "
            "y_next = y + (sigma_next - sigma) (d + d') / 2; return sqrt(alpha_bar_next) y_next (alpha_bar = 1 at t_next = -1)")
    x = torch.randn((32, 2), generator=torch.Generator().manual_seed(54), dtype=torch.float64)
    for t, t_next in ((999, 799), (400, 300), (120, 60), (60, -1)):
        x_t = x * (1 - schedule.alpha_bars[t].double()).sqrt()  # roughly the right scale at t
        calls.clear()
        out = heun_step_fn(model, x_t, t, t_next, schedule)
        expect_tensor(ex, out, x_t.shape, f"heun_step(t={t}, t_next={t_next})")
        n_calls = len(calls)
        calls.clear()
        good = heun_step_reference(model, x_t, t, t_next, schedule)
        wrongs = _heun_variants(model, x_t, t, t_next, schedule)
        if t_next >= 0 and n_calls == 1:
            fail(ex, f"heun_step(t={t}, t_next={t_next}) called the model once", wrongs[0][1])
        if t_next < 0 and n_calls == 2:
            fail(ex, f"heun_step(t={t}, t_next=-1) called the model twice", wrongs[1][1])
        diagnose(ex, out, good, wrongs, f"heun_step(t={t}, t_next={t_next})", hint)
        if n_calls != (2 if t_next >= 0 else 1):
            fail(ex, f"heun_step(t={t}, t_next={t_next}) called the model {n_calls} times",
                 "Heun's step costs 2 network evaluations, the last step (to t_next = -1) 1")
    passed(ex, "your step is Karras et al.'s Heun step: 2 evaluations, averaged slopes, plain Euler to sigma = 0.")


# ----------------------------------------------------------------------------------------------
# Exercise 5.5 (widget): the largest stable step size of plain Langevin
# ----------------------------------------------------------------------------------------------

def langevin_stable(mixture, x_init, step_size, n_steps, seed):
    """Run plain Langevin as ``widgets.langevin_explorer`` does (generator seeded with ``seed``) and say
    whether it stayed stable: every sample finite and within 100 times the starting box."""
    x = langevin(mixture.score, x_init, step_size, n_steps, generator=torch.Generator().manual_seed(seed))
    return bool(torch.isfinite(x).all() and x.abs().max() < 100 * x_init.abs().max())


def check_largest_stable_step(answer, mixture, x_init, n_steps, seed, factor=1.15):
    """Widget exercise: ``answer`` should be (about) the largest step size at which plain Langevin
    (``n_steps`` steps from ``x_init``) stays stable. Accepted: stable at ``answer``, diverged at
    ``factor * answer`` (the slider moves in steps of about 12%)."""
    ex = "5.5"
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer) or answer <= 0:
        fail(ex, f"answer should be a positive number (a step size), got {answer!r}",
             "read the step-size slider of the widget (annealed off) and type that number")
    s_min = mixture.stds.min().item()
    if not langevin_stable(mixture, x_init, answer, n_steps, seed):
        fail(ex, f"at step size {answer:g} plain Langevin diverges",
             "move the step-size slider DOWN until the readout says 'stable'")
    if langevin_stable(mixture, x_init, factor * answer, n_steps, seed):
        fail(ex, f"step size {answer:g} is stable, but so is {factor * answer:.3g}: you are asked for the LARGEST",
             "move the step-size slider UP until the readout says DIVERGED, then take one notch down")
    passed(ex, f"{answer:g} is stable and {factor * answer:.3g} diverges. Near a mode the update is "
               f"x - mu <- (1 - eps / (2 s^2)) (x - mu) + noise, which blows up once |1 - eps / (2 s^2)| > 1, i.e. "
               f"eps > 4 s^2 = {4 * s_min**2:g}. Annealed Langevin keeps alpha_i / sigma_i^2 constant for this reason.")
