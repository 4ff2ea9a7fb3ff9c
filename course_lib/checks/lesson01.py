"""Checks for lesson 01, the forward process and the signal-to-noise ratio.

Each ``check_*`` takes the learner's function (or answer), tests what it *does* against
course_lib's reference implementation and the closed forms of Ho et al. (2020), and prints a pass
line or raises :class:`~course_lib.checks.ExerciseError` with a hint. Where a wrong result matches a
common mistake (alpha instead of alpha_bar, a missing square root, one step too many...), the hint
names that mistake. A ``NotImplementedError`` from an unfinished exercise always propagates.

Time convention (as everywhere in the course): integer t in 0..T-1, t = 0 is already one step of
noise, so ``alpha_bar[t] = prod_{s=0..t} (1 - beta_s)``; course t is the paper's t + 1.
"""

import math

import torch

from .. import diffusion
from ..schedules import Schedule, make_schedule
from . import expect_close, expect_tensor, fail, passed

EQ2 = "Ho et al. (2020), eq. 2: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)"
EQ4 = "Ho et al. (2020), eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps"
SNR_DEF = "Kingma et al. (2021), eq. 2: SNR(t) = alpha_t^2 / sigma_t^2, here alpha_bar_t / (1 - alpha_bar_t)"

T = 1000
SNR_LEVEL = 0.1  # exercise 1.6 asks for the first t with SNR(t) < SNR_LEVEL
SNR_CROSSING_TOL = 5  # widget users may land a few steps off


def _linear():
    return make_schedule("linear", T)


def _call(exercise, fn, *args, hint):
    """Call the learner's ``fn``; NotImplementedError goes through, other errors become a hint."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001 - any crash of learner code is reported with a hint
        fail(exercise, f"your function raised {type(err).__name__}: {err}", hint)


def _closest(value, candidates, rtol, rows=None):
    """Name of the candidate (name -> tensor) that ``value`` matches within ``rtol``, else None.

    ``rows``: an optional boolean mask over the first axis; only those rows are compared.
    """
    v = torch.as_tensor(value, dtype=torch.float64)
    v = v if rows is None else v[rows]
    for name, c in candidates.items():
        c = torch.as_tensor(c, dtype=torch.float64)
        c = c if rows is None else c[rows]
        if c.shape == v.shape and torch.isfinite(v).all() and torch.allclose(v, c, rtol=rtol, atol=1e-7):
            return name
    return None


def _unchanged(exercise, before, after, name):
    if not torch.equal(before, after):
        fail(exercise, f"your function changed its input {name} in place",
             f"build a new tensor instead of writing into {name} (avoid in-place ops such as mul_ or x *= ...)")


# --------------------------------------------------------------------------- 1.1


def check_alpha_bar_from_betas(fn):
    """Exercise 1.1: ``fn(betas) -> alpha_bars`` with alpha_bar_t = prod_{s<=t} (1 - beta_s)."""
    ex = "1.1"
    g = torch.Generator().manual_seed(11)
    cases = {
        "7 random betas": torch.rand(7, generator=g) * 0.4 + 0.05,  # big steps: mistakes show clearly
        "linear T=1000": _linear().betas,
        "cosine T=1000": make_schedule("cosine", T).betas,
    }
    results = {}
    for label, betas in cases.items():
        given = betas.clone()
        out = results[label] = _call(ex, fn, given, hint="take a (T,) tensor of betas and return a (T,) tensor")
        _unchanged(ex, betas, given, "betas")
        if isinstance(out, torch.Tensor) and out.ndim == 0:
            fail(ex, f"for {label} you returned a single number ({out.item():.4g}), not one alpha_bar per step",
                 "use a *cumulative* product (torch.cumprod(..., dim=0)), not torch.prod: "
                 "alpha_bar_t is the product up to step t, for every t")
        expect_tensor(ex, out, betas.shape, name=f"alpha_bars for {label}")
        b = betas.double()
        ref = torch.cumprod(1 - b, dim=0)
        mistakes = {
            "the product of the betas": torch.cumprod(b, dim=0),
            "one minus the sum of the betas": 1 - torch.cumsum(b, dim=0),
            "alpha_t = 1 - beta_t itself": 1 - b,
            "shifted by one step": torch.cat([torch.ones(1, dtype=b.dtype), ref[:-1]]),
            "shifted by one step the other way": torch.cat([ref[1:], ref[-1:] * (1 - b[-1:])]),
            "sqrt(alpha_bar)": ref.sqrt(),
        }
        hints = {
            "the product of the betas": "multiply the alphas alpha_s = 1 - beta_s, not the betas",
            "one minus the sum of the betas": "alpha_bar is a product of the (1 - beta_s), not 1 minus their sum "
                                              "(the two agree only while the betas are tiny)",
            "alpha_t = 1 - beta_t itself": "alpha_t = 1 - beta_t is one step's factor; alpha_bar_t is the running "
                                           "product of all of them up to t (torch.cumprod)",
            "shifted by one step": "off by one: in the course's convention t = 0 is already one noising step, "
                                   "so alpha_bar[0] = 1 - beta[0], not 1",
            "shifted by one step the other way": "off by one: alpha_bar[t] includes the steps 0..t, no more",
            "sqrt(alpha_bar)": "you returned sqrt(alpha_bar); drop the square root (it belongs in q_sample)",
        }
        if not torch.allclose(out.double(), ref, rtol=1e-4, atol=1e-7):
            mistake = _closest(out, mistakes, rtol=1e-4)
            if mistake:
                fail(ex, f"for {label} your alpha_bars equal {mistake}", hints[mistake] + f" ({EQ4} and below it)")
        expect_close(ex, out, ref, name=f"alpha_bars for {label}", rtol=1e-4, atol=1e-7,
                     hint="alpha_bar_t = prod_{s=0..t} (1 - beta_s), Ho et al. (2020), the line under eq. 4")
    lin, cos = results["linear T=1000"], results["cosine T=1000"]
    passed(ex, f"alpha_bar matches for random, linear and cosine betas (linear, T=1000: alpha_bar[0] = "
               f"{lin[0].item():.4f}, alpha_bar[999] = {lin[-1].item():.2e}; cosine: alpha_bar[999] = "
               f"{cos[-1].item():.1e})")


# --------------------------------------------------------------------------- 1.2


def _moments_of_mistakes(betas, t):
    """(slope, variance) of x_t after the chain, for the right chain and for common mistakes."""
    b = betas.double().tolist()

    def run(n_steps, scale, noise_var):
        slope, var = 1.0, 0.0
        for s in range(n_steps):
            slope, var = slope * scale(b[s]), var * scale(b[s]) ** 2 + noise_var(b[s])
        return slope, var

    def run_reused(n_steps):  # one eps for all steps: the noise terms add up coherently, std by std
        slope, std = 1.0, 0.0
        for s in range(n_steps):
            slope, std = slope * math.sqrt(1 - b[s]), std * math.sqrt(1 - b[s]) + math.sqrt(b[s])
        return slope, std**2

    n = t + 1
    return {
        "right": run(n, lambda x: math.sqrt(1 - x), lambda x: x),
        "one noise draw reused at every step": run_reused(n),
        "t steps (one too few)": run(n - 1, lambda x: math.sqrt(1 - x), lambda x: x),
        "t + 2 steps (one too many)": run(n + 1, lambda x: math.sqrt(1 - x), lambda x: x),
        "no square root on 1 - beta": run(n, lambda x: 1 - x, lambda x: x),
        "beta as the noise's std": run(n, lambda x: math.sqrt(1 - x), lambda x: x * x),
        "sqrt(beta) as the noise's variance": run(n, lambda x: math.sqrt(1 - x), lambda x: math.sqrt(x)),
        "no noise": run(n, lambda x: math.sqrt(1 - x), lambda x: 0.0),
        "x_0 never scaled": run(n, lambda x: 1.0, lambda x: x),
    }


CHAIN_HINTS = {
    "one noise draw reused at every step": "the same eps seems to be reused at every step, so the noise adds up "
                                           "coherently and the variance is too large: draw fresh noise inside the "
                                           "loop, eps = torch.randn(x.shape, generator=generator), at each step",
    "t steps (one too few)": "one step too few: x_t in the course's convention comes after the steps "
                             "s = 0, 1, ..., t (that is t + 1 steps; t = 0 is already one step)",
    "t + 2 steps (one too many)": "one step too many: run the steps s = 0, 1, ..., t and stop",
    "no square root on 1 - beta": "scale x_{t-1} by sqrt(1 - beta_t), not by (1 - beta_t)",
    "beta as the noise's std": "beta_t is the *variance* of the added noise: multiply eps by sqrt(beta_t)",
    "sqrt(beta) as the noise's variance": "the added noise has variance beta_t, so its std is sqrt(beta_t) "
                                          "(you seem to have used beta_t ** 0.25)",
    "no noise": "no noise seems to be added: each step adds sqrt(beta_t) * eps with fresh eps ~ N(0, I)",
    "x_0 never scaled": "each step also shrinks the previous x by sqrt(1 - beta_t)",
}


PATTERN = torch.tensor([-1.0, -0.5, 0.0, 0.3, 0.5, 1.0, 1.0, -1.0]).reshape(1, 1, 2, 4)  # a tiny "image"


def _chain_case(ex, fn, betas, t, n, seed):
    pattern = PATTERN
    x0 = pattern.expand(n, 1, 2, 4).clone()  # (n, 1, 2, 4): n copies of one tiny image
    given = x0.clone()
    out = _call(ex, fn, given, t, betas.clone(), torch.Generator().manual_seed(seed),
                hint="forward_chain(x0, t, betas, generator) should return a tensor shaped like x0")
    _unchanged(ex, x0, given, "x0")
    expect_tensor(ex, out, x0.shape, name="x_t")
    out = out.detach().double()
    mean, var = out.mean(0), out.var(0)  # per pixel, over the n copies
    x = pattern[0].double()
    slope = (mean * x).sum().item() / (x * x).sum().item()
    var_hat = var.mean().item()
    moments = _moments_of_mistakes(betas, t)
    slope_ref, var_ref = moments["right"]
    # tolerances from sampling error: the mean of n draws has std sqrt(var / n)
    z = ((mean - slope_ref * x) / math.sqrt(var_ref / n)).abs().max().item() if var_ref > 0 else 0.0
    var_ok = abs(var_hat / var_ref - 1) < 6 * math.sqrt(2 / (n - 1) / x.numel()) + 1e-3
    if z < 5 and var_ok:
        return slope, var_hat, slope_ref, var_ref
    # which mistake explains the moments best?
    def distance(m):
        return abs(slope - m[0]) / max(abs(m[0]), 1e-3) + abs(var_hat - m[1]) / max(m[1], 1e-3)
    name = min((k for k in moments if k != "right"), key=lambda k: distance(moments[k]))
    what = (f"with t = {t}, your x_t has mean {slope:.4f} * x_0 and variance {var_hat:.4f} per pixel "
            f"(over {n} runs), but q(x_t | x_0) has mean {slope_ref:.4f} * x_0 and variance {var_ref:.4f}")
    if distance(moments[name]) < 0.1:
        fail(ex, what, CHAIN_HINTS[name] + f" ({EQ2})")
    fail(ex, what, f"apply x <- sqrt(1 - beta_s) x + sqrt(beta_s) eps for s = 0, ..., t with fresh noise "
                   f"each step ({EQ2})")


def check_forward_chain(fn):
    """Exercise 1.2: ``fn(x0, t, betas, generator) -> x_t`` by running eq. 2 step by step."""
    ex = "1.2"
    big = torch.linspace(0.05, 0.4, 8)  # large betas: every step and every mistake shows
    n = 4000  # 4000 x 8 pixels stays under torch's threshold for multi-threaded ops: fast on a busy CPU
    for t in (0, 2, 5):
        _chain_case(ex, fn, big, t, n=n, seed=t)
    t = 199
    slope, var, slope_ref, var_ref = _chain_case(ex, fn, _linear().betas, t, n=n, seed=99)
    se = math.sqrt(var_ref / n / (PATTERN**2).sum().item())  # sampling error of the fitted slope
    passed(ex, f"after t = {t} ({t + 1} steps of the linear schedule) the chain's x_t has mean {slope:.3f} x_0 "
               f"(closed form {slope_ref:.3f}, sampling error ±{se:.3f}) and variance {var:.3f} "
               f"(closed form {var_ref:.3f})")


# --------------------------------------------------------------------------- 1.3


def check_q_sample(fn):
    """Exercise 1.3: ``fn(x0, t, alpha_bars, noise) -> x_t`` for a batch with one t per image."""
    ex = "1.3"
    s = _linear()
    ab = s.alpha_bars
    g = torch.Generator().manual_seed(13)
    # B = 32 on purpose: a (B,) tensor then broadcasts silently against the image width (32)
    for B in (32, 6):
        x0 = torch.rand((B, 1, 32, 32), generator=g) * 2 - 1
        t = torch.randint(0, T, (B,), generator=g)
        t[0], t[1] = 0, T - 1
        noise = torch.randn(x0.shape, generator=g)
        args = [x0.clone(), t.clone(), ab.clone(), noise.clone()]
        out = _call(ex, fn, *args, hint="alpha_bars[t] has shape (B,); reshape it to (B, 1, 1, 1) to scale "
                                        "(B, 1, 32, 32) images, e.g. alpha_bars[t].reshape(-1, 1, 1, 1)")
        _unchanged(ex, x0, args[0], "x0")
        _unchanged(ex, noise, args[3], "noise")
        expect_tensor(ex, out, x0.shape, name="x_t")
        ref = diffusion.q_sample(x0, t, s, noise=noise)
        if not torch.allclose(out, ref, atol=1e-5, rtol=1e-5):
            a = ab[t].reshape(-1, 1, 1, 1)
            prev = ab[(t - 1).clamp(min=0)].reshape(-1, 1, 1, 1)
            nxt = ab[(t + 1).clamp(max=T - 1)].reshape(-1, 1, 1, 1)
            mistakes = {
                "no square roots": a * x0 + (1 - a) * noise,
                "x_0 and the noise swapped": (1 - a).sqrt() * x0 + a.sqrt() * noise,
                "alpha_bar of t - 1": prev.sqrt() * x0 + (1 - prev).sqrt() * noise,
                "alpha_bar of t + 1": nxt.sqrt() * x0 + (1 - nxt).sqrt() * noise,
                "the first image's t for all": ab[t[0]].sqrt() * x0 + (1 - ab[t[0]]).sqrt() * noise,
                "sqrt(1 - alpha_bar) as a variance": a.sqrt() * x0 + (1 - a) * noise,
            }
            if B == 32:
                a_w = ab[t]  # (B,) broadcast against the last axis (W = 32): silently wrong
                mistakes["alpha_bar[t] along the image width"] = a_w.sqrt() * x0 + (1 - a_w).sqrt() * noise
            hints = {
                "no square roots": "eq. 4 scales by sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t): those are "
                                   "standard deviations, alpha_bar_t and 1 - alpha_bar_t are variances",
                "x_0 and the noise swapped": "x_0 gets sqrt(alpha_bar_t) (close to 1 at small t), the noise "
                                             "gets sqrt(1 - alpha_bar_t)",
                "alpha_bar of t - 1": "off by one: use alpha_bars[t] itself (course t = 0 is already one step of "
                                      "noise; and alpha_bars[t - 1] at t = 0 silently wraps round to t = 999)",
                "alpha_bar of t + 1": "off by one: use alpha_bars[t] itself",
                "the first image's t for all": "every image has its own t: index alpha_bars with the whole "
                                               "(B,) tensor t",
                "sqrt(1 - alpha_bar) as a variance": "the noise is scaled by sqrt(1 - alpha_bar_t), not by "
                                                     "1 - alpha_bar_t",
                "alpha_bar[t] along the image width": "alpha_bars[t] has shape (B,), which broadcasts against "
                                                      "the image *width* here; reshape it to (B, 1, 1, 1) first",
            }
            inner = (t > 0) & (t < T - 1)  # t - 1 and t + 1 are not timesteps at the ends
            mistake = _closest(out, mistakes, rtol=1e-4, rows=inner)
            if mistake:
                fail(ex, f"your x_t matches {mistake}", hints[mistake] + f" ({EQ4})")
        expect_close(ex, out, ref, name="x_t", atol=1e-5, rtol=1e-5,
                     hint=f"given the same noise, x_t must equal {EQ4}, per image with its own t")
    # moments: many noisy copies of one image at two timesteps, with fresh noise
    n = 1000
    x_one = torch.rand((1, 1, 32, 32), generator=g) * 2 - 1
    x0 = x_one.expand(2 * n, 1, 32, 32).clone()  # (2n, 1, 32, 32)
    t = torch.tensor([100] * n + [600] * n)
    out = _call(ex, fn, x0, t, ab.clone(), torch.randn(x0.shape, generator=g), hint="")
    report = []
    for k, tk in enumerate((100, 600)):
        group = out[k * n:(k + 1) * n].double()
        mean, var = group.mean(0), group.var(0)  # (1, 32, 32) each
        slope = ((mean * x_one[0]).sum() / (x_one[0] ** 2).sum()).item()
        report.append(f"t = {tk}: mean {slope:.3f} x_0 (sqrt(alpha_bar) = {ab[tk].sqrt().item():.3f}), "
                      f"variance {var.mean().item():.3f} (1 - alpha_bar = {1 - ab[tk].item():.3f})")
    passed(ex, "equal to course_lib.diffusion.q_sample given the same noise; over 1000 draws " + "; ".join(report))


# --------------------------------------------------------------------------- 1.4


def check_snr(fn):
    """Exercise 1.4: ``fn(alpha_bars) -> SNR`` with SNR = alpha_bar / (1 - alpha_bar)."""
    ex = "1.4"
    cases = {
        "alpha_bar = [0.5, 0.2, 0.9, 0.99]": torch.tensor([0.5, 0.2, 0.9, 0.99]),
        "the linear schedule": _linear().alpha_bars,
        "the cosine schedule": make_schedule("cosine", T).alpha_bars,
    }
    hints = {
        "(1 - alpha_bar) / alpha_bar": "that is the noise-to-signal ratio: put the signal variance alpha_bar on top",
        "sqrt(alpha_bar / (1 - alpha_bar))": "SNR is a ratio of *variances*: (sqrt(alpha_bar))^2 / "
                                             "(sqrt(1 - alpha_bar))^2, no square root",
        "log SNR": "return SNR itself, not its logarithm",
        "alpha_bar": "divide by the noise variance 1 - alpha_bar",
        "alpha_bar / (1 + alpha_bar)": "the noise variance is 1 - alpha_bar",
    }
    for label, ab in cases.items():
        given = ab.clone()
        out = _call(ex, fn, given, hint="take a tensor of alpha_bars and return a tensor of the same shape")
        _unchanged(ex, ab, given, "alpha_bars")
        expect_tensor(ex, out, ab.shape, name=f"SNR for {label}")
        a = ab.double()
        ref = a / (1 - a)
        if not torch.allclose(out.double(), ref, rtol=1e-4, atol=1e-8):
            mistakes = {"(1 - alpha_bar) / alpha_bar": (1 - a) / a, "sqrt(alpha_bar / (1 - alpha_bar))": ref.sqrt(),
                        "log SNR": ref.log(), "alpha_bar": a, "alpha_bar / (1 + alpha_bar)": a / (1 + a)}
            mistake = _closest(out, mistakes, rtol=1e-4)
            if mistake:
                fail(ex, f"for {label} your SNR equals {mistake}", hints[mistake] + f" ({SNR_DEF})")
        expect_close(ex, out, ref, name=f"SNR for {label}", rtol=1e-4, atol=1e-8,
                     hint=f"{SNR_DEF}; e.g. alpha_bar = 0.5 gives SNR = 1, alpha_bar = 0.9 gives 9")
    lin = _call(ex, fn, _linear().alpha_bars, hint="")
    passed(ex, f"SNR(t) = alpha_bar / (1 - alpha_bar); linear schedule: SNR(0) = {lin[0].item():.4g} "
               f"(log-SNR {math.log(lin[0].item()):.2f}), SNR(999) = {lin[-1].item():.2e} "
               f"(log-SNR {math.log(lin[-1].item()):.2f})")


# --------------------------------------------------------------------------- 1.5


def check_alpha_bar_from_log_snr(fn):
    """Exercise 1.5: ``fn(log_snr) -> alpha_bar``, the inverse map alpha_bar = sigmoid(log SNR)."""
    ex = "1.5"
    hint = ("solve SNR = alpha_bar / (1 - alpha_bar) for alpha_bar with SNR = exp(lambda): alpha_bar = "
            "1 / (1 + exp(-lambda)) = sigmoid(lambda) (Kingma et al., 2021, eqs. 3-4, where gamma = -lambda)")
    lam = torch.tensor([0.0, 2.0, -2.0, math.log(9.0)])
    cases = {
        "lambda = [0, 2, -2, log 9]": lam,
        "the linear schedule's log-SNR": _linear().log_snr,
        "extreme lambda = [-100, -30, 30, 100]": torch.tensor([-100.0, -30.0, 30.0, 100.0]),
    }
    for label, lam in cases.items():
        given = lam.clone()
        out = _call(ex, fn, given, hint="take a tensor of log-SNRs and return a tensor of the same shape")
        _unchanged(ex, lam, given, "log_snr")
        if isinstance(out, torch.Tensor) and out.shape == lam.shape and not torch.isfinite(out).all():
            fail(ex, f"for {label} you returned {out.tolist()}",
                 "exp(lambda) / (1 + exp(lambda)) overflows to inf / inf = nan for large lambda; "
                 "use 1 / (1 + exp(-lambda)) or, better, torch.sigmoid(lambda)")
        expect_tensor(ex, out, lam.shape, name=f"alpha_bar for {label}")
        ref = torch.sigmoid(lam.double())
        if not torch.allclose(out.double(), ref, rtol=1e-4, atol=1e-7):
            l64 = lam.double()
            mistakes = {
                "sigmoid(-lambda), which is 1 - alpha_bar": torch.sigmoid(-l64),
                "exp(lambda), which is the SNR": l64.exp(),
                "sqrt(sigmoid(lambda)), which is sqrt(alpha_bar)": ref.sqrt(),
            }
            mistake = _closest(out, mistakes, rtol=1e-4)
            if mistake:
                fail(ex, f"for {label} you returned {mistake}", hint)
        expect_close(ex, out, ref, name=f"alpha_bar for {label}", rtol=1e-4, atol=1e-7, hint=hint)
    s = _linear()
    back = _call(ex, fn, s.log_snr, hint="")
    err = (back.double() - s.alpha_bars.double()).abs().max().item()
    passed(ex, f"alpha_bar = sigmoid(log SNR); the linear schedule's alpha_bars come back from its log-SNR "
               f"to within {err:.1e}")


# --------------------------------------------------------------------------- 1.6


def snr_crossing(schedule, level=1.0):
    """The first t with SNR(t) < ``level``, or None if there is none."""
    below = (schedule.snr < level).nonzero()
    return int(below[0]) if len(below) else None


def check_snr_crossing(answer, schedule=None):
    """Exercise 1.6 (widget): the first t at which SNR(t) < 0.1 (log-SNR < -2.30), linear schedule, T = 1000.

    The lesson itself shows where SNR crosses 1; this asks for a level one decade lower, read off the
    widget's readout or its log-SNR curve. Answers within ``SNR_CROSSING_TOL`` steps pass.
    """
    ex = "1.6"
    s = schedule if isinstance(schedule, Schedule) else _linear()
    level = SNR_LEVEL
    right = snr_crossing(s, level)
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer):
        fail(ex, f"answer should be a timestep (a whole number), got {answer!r}",
             "move the widget's slider and enter the t you found, e.g. answer = 123")
    if answer != int(answer):
        fail(ex, f"answer should be a timestep (a whole number), got {answer}",
             "enter the slider's t, not the SNR or alpha_bar value shown next to it")
    t = int(answer)
    if not 0 <= t < s.T:
        fail(ex, f"t = {t} is not a timestep: valid ones are 0..{s.T - 1}", "read t off the widget's slider")
    if abs(t - right) <= SNR_CROSSING_TOL:
        passed(ex, f"the first t with SNR(t) < {level} is t = {right} (SNR = {s.snr[right].item():.4f}, "
                   f"log-SNR = {s.log_snr[right].item():.3f}, alpha_bar = {s.alpha_bars[right].item():.4f}); "
                   f"you entered {t}")
        return
    snr_t = s.snr[t].item()
    for other in (1.0, 0.01):
        if abs(t - snr_crossing(s, other)) <= SNR_CROSSING_TOL:
            fail(ex, f"t = {t} is where SNR drops below {other:g} (log-SNR {math.log(other):.2f}), not {level:g}",
                 f"look for log-SNR = ln {level:g} = {math.log(level):.2f} in the widget's readout")
    if snr_t >= level:
        direction = f"SNR({t}) = {snr_t:.3g} is still at or above {level:g}: go to larger t"
    else:
        direction = (f"SNR({t}) = {snr_t:.3g} is below {level:g}, but so is SNR a few steps earlier: "
                     f"find the *first* t where it drops below {level:g}")
    fail(ex, f"t = {t} is more than {SNR_CROSSING_TOL} steps away from the first t with SNR(t) < {level:g}",
         f"{direction}. SNR = {level:g} is log-SNR = ln {level:g} = {math.log(level):.2f} "
         f"on the widget's curve and in its readout")
