"""Checks for lesson 02, noise schedules (``solutions/02_noise_schedules.ipynb``).

Each check calls the learner's function on a few inputs and compares what comes back with
:mod:`course_lib.schedules`, the reference implementation. A ``NotImplementedError`` raised by an
unfinished exercise is not caught: it reaches the learner unchanged.
"""

import math

import torch

from ..schedules import cosine_betas, linear_betas, make_schedule, rescale_zero_terminal_snr
from . import expect_close, expect_tensor, fail, passed

__all__ = ["check_cosine_betas", "check_zero_terminal_snr", "check_noise_only_steps",
           "smallest_T_reaching", "check_smallest_T"]

# The widget exercise (2.4): the schedule explorer's T slider (min 10, max 2000, step 10) and its
# beta_end slider; the linear schedule should bring alpha_bar at the last step below THRESHOLD.
SLIDER_MIN, SLIDER_MAX, SLIDER_STEP = 10, 2000, 10
BETA_END, THRESHOLD = 0.02, 1e-3


def _alpha_bars(betas):
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) (Ho et al., 2020, eq. 4), in float64."""
    return torch.cumprod(1.0 - torch.as_tensor(betas).double(), dim=0)


def check_cosine_betas(cosine_betas_fn):
    """Exercise 2.1: ``cosine_betas_fn(T, s=0.008, max_beta=0.999)`` -> (T,) betas of the cosine
    schedule (Nichol & Dhariwal, 2021, eq. 17), clipped at ``max_beta``."""
    ex = "2.1"
    eq = "Nichol & Dhariwal (2021), eq. 17, and beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} (their Sec. 3.2)"
    for T in (10, 1000):
        betas = cosine_betas_fn(T)
        expect_tensor(ex, betas, (T,), name=f"cosine_betas({T})")
        expected = cosine_betas(T)
        if torch.allclose(betas.double(), expected.double(), atol=1e-4, rtol=1e-3):
            continue
        b = betas.double()
        if b[0].abs() < 1e-9:
            fail(ex, f"with T = {T} your first beta is 0, expected {expected[0].item():.3g}",
                 "off by one: in course_lib t = 0 is already one noising step, so beta_0 = 1 - f(1/T) / f(0), "
                 "not 1 - f(0) / f(0). Evaluate f on the T + 1 points 0, 1/T, ..., 1 and take ratios of neighbours.")
        if b.max() > 0.999 + 1e-6:
            fail(ex, f"with T = {T} your largest beta is {b.max().item():.6g}, above max_beta = 0.999",
                 "clip the betas at max_beta (torch.clamp(betas, max=max_beta)): the last ratio "
                 "alpha_bar(1) / alpha_bar(1 - 1/T) is almost 0, which would make beta = 1 (Sec. 3.2).")
        ab, ab_expected = _alpha_bars(b), _alpha_bars(expected)
        if torch.allclose(b, _cos_not_squared(T), atol=1e-4, rtol=1e-3):
            fail(ex, "your betas match f(t) = cos(...) without the square",
                 f"f(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2): square the cosine ({eq}).")
        if torch.allclose(b, 1 - ab_expected.clamp(min=1e-12), atol=1e-4, rtol=1e-3) or \
                torch.allclose(b, ab_expected, atol=1e-4, rtol=1e-3):
            fail(ex, "you returned something built from alpha_bar itself, not the per-step betas",
                 f"beta_t = 1 - alpha_bar_t / alpha_bar_(t-1): a ratio of neighbouring alpha_bars ({eq}).")
        expect_close(ex, ab[:-1], ab_expected[:-1], name=f"alpha_bar implied by your betas (T = {T})",
                     atol=1e-4, rtol=1e-3,
                     hint=f"alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2) and "
                          f"s = 0.008 inside the cosine ({eq}).")
        expect_close(ex, b, expected, name=f"cosine_betas({T})", atol=1e-4, rtol=1e-3, hint=eq)
    # the keyword arguments must be used, not hard-coded
    expect_close(ex, cosine_betas_fn(50, s=0.1), cosine_betas(50, s=0.1), name="cosine_betas(50, s=0.1)",
                 atol=1e-4, rtol=1e-3, hint="use the argument s, do not hard-code 0.008")
    betas = cosine_betas_fn(50, max_beta=0.2)
    if torch.as_tensor(betas).max() > 0.2 + 1e-6:
        fail(ex, f"cosine_betas(50, max_beta=0.2) returned a beta of {torch.as_tensor(betas).max().item():.4g}",
             "clip at the max_beta argument, not at a hard-coded 0.999")
    expect_close(ex, betas, cosine_betas(50, max_beta=0.2), name="cosine_betas(50, max_beta=0.2)",
                 atol=1e-4, rtol=1e-3, hint="clip at max_beta after computing every ratio")
    passed(ex, f"your cosine betas match course_lib.schedules.cosine_betas (T = 10, 50, 1000; "
               f"last beta clipped at {cosine_betas(1000)[-1].item():.3f}).")


def _cos_not_squared(T, s=0.008):
    f = [math.cos((i / T + s) / (1 + s) * math.pi / 2) for i in range(T + 1)]
    return torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)], dtype=torch.float64)


def check_zero_terminal_snr(rescale_fn):
    """Exercise 2.2: ``rescale_fn(betas)`` -> betas whose sqrt(alpha_bar) is shifted and scaled so
    that the last step has alpha_bar = 0 and the first is unchanged (Lin et al., 2024, Algorithm 1)."""
    ex = "2.2"
    eq = "Lin et al. (2024), Algorithm 1"
    for name, T in (("linear", 1000), ("linear", 50), ("cosine", 100)):
        betas = make_schedule(name, T).betas
        before = betas.clone()
        out = rescale_fn(betas)
        if not torch.equal(betas, before):
            fail(ex, "your function changed the betas it was given (in place)",
                 "work on a copy: e.g. alphas = 1 - betas makes a new tensor; avoid in-place ops such as sub_")
        expect_tensor(ex, out, (T,), name=f"the rescaled betas of {name} T = {T}")
        expected = rescale_zero_terminal_snr(betas)
        ab, ab_expected = _alpha_bars(out), _alpha_bars(expected)
        what = f"for the {name} schedule with T = {T}"
        if torch.allclose(out.double(), ab_expected, atol=1e-5) or torch.allclose(out.double(), ab_expected.sqrt(), atol=1e-5):
            fail(ex, f"{what} you returned alpha_bar (or its square root), not betas",
                 "convert back at the end: alpha_t = alpha_bar_t / alpha_bar_(t-1) (alpha_0 = alpha_bar_0), "
                 "beta_t = 1 - alpha_t.")
        if abs(ab[-1].item()) > 1e-6:
            fail(ex, f"{what} alpha_bar at the last step is {ab[-1].item():.3g}, expected exactly 0",
                 f"subtract sqrt(alpha_bar) of the LAST step from every sqrt(alpha_bar) ({eq}); "
                 "the last beta should then be 1.")
        if abs(ab[0].item() - ab_expected[0].item()) > 1e-5:
            fail(ex, f"{what} alpha_bar at the first step moved from {ab_expected[0].item():.6f} to {ab[0].item():.6f}",
                 f"after the shift, scale by sqrt(alpha_bar_0) / (sqrt(alpha_bar_0) - sqrt(alpha_bar_(T-1))) so that "
                 f"the first step is unchanged ({eq}).")
        shifted_ab = _rescaled_alpha_bar_not_sqrt(betas)
        if torch.allclose(ab, shifted_ab, atol=1e-5) and not torch.allclose(shifted_ab, ab_expected, atol=1e-5):
            fail(ex, f"{what} you shifted and scaled alpha_bar itself",
                 f"Algorithm 1 rescales sqrt(alpha_bar), then squares it ({eq}).")
        expect_close(ex, ab, ab_expected, name=f"alpha_bar of your rescaled {name} schedule (T = {T})",
                     atol=1e-5, rtol=1e-4,
                     hint=f"sqrt_ab <- (sqrt_ab - sqrt_ab[-1]) * sqrt_ab[0] / (sqrt_ab[0] - sqrt_ab[-1]), "
                          f"with sqrt_ab = sqrt(cumprod(1 - betas)) ({eq}).")
        expect_close(ex, out[:-1], expected[:-1], name=f"your rescaled betas ({name}, T = {T})", atol=1e-4, rtol=1e-3,
                     hint=f"from the new alpha_bar: alpha_t = alpha_bar_t / alpha_bar_(t-1), beta_t = 1 - alpha_t ({eq}).")
    s = make_schedule("linear", 50)
    passed(ex, f"last alpha_bar = 0, first unchanged, and equal to course_lib's rescaling "
               f"(linear T = 50: the last alpha_bar went from {s.alpha_bars[-1].item():.3f} to 0).")


def _rescaled_alpha_bar_not_sqrt(betas):
    """A common slip: apply Algorithm 1's shift and scale to alpha_bar instead of sqrt(alpha_bar)."""
    ab = _alpha_bars(betas)
    return (ab - ab[-1]) * ab[0] / (ab[0] - ab[-1])


def check_noise_only_steps(noise_only_steps_fn):
    """Exercise 2.3: ``noise_only_steps_fn(betas, threshold=-5.0)`` -> the number of steps t whose
    log-SNR, log(alpha_bar_t / (1 - alpha_bar_t)), is below ``threshold``."""
    ex = "2.3"
    cases = [("linear", 1000, {}, -5.0), ("cosine", 1000, {}, -5.0), ("linear", 50, {}, -5.0),
             ("linear", 1000, {}, 0.0), ("cosine", 200, {"zero_terminal_snr": True}, -5.0),
             ("linear", 300, {}, -2.5)]
    got, expected, slips = [], [], {}
    hints = {
        "complement": "you counted the steps ABOVE the threshold (the complement); count those below it",
        "one-step alpha": "use the cumulative product alpha_bar_t = prod_{s<=t} (1 - beta_s), not the one-step "
                          "alpha_t = 1 - beta_t",
        "log10": "log-SNR is the natural logarithm (torch.log), not log10",
        "no log": "compare the LOG of the signal-to-noise ratio alpha_bar / (1 - alpha_bar) with the threshold",
        "log alpha_bar": "the SNR is alpha_bar / (1 - alpha_bar), not alpha_bar alone",
        "threshold ignored": "use the threshold argument instead of a hard-coded -5",
        "halved log-SNR": "your log-SNR is half the right one: the SNR is a ratio of VARIANCES, alpha_bar / "
                          "(1 - alpha_bar), not of standard deviations sqrt(alpha_bar) / sqrt(1 - alpha_bar)",
    }
    for name, T, kw, thr in cases:
        s = make_schedule(name, T, **kw)
        value = noise_only_steps_fn(s.betas, threshold=thr) if thr != -5.0 else noise_only_steps_fn(s.betas)
        try:
            got.append(int(value))
        except (TypeError, ValueError, RuntimeError):
            fail(ex, f"expected a whole number of steps, got {type(value).__name__} {value!r}",
                 "return the count, e.g. int((log_snr < threshold).sum())")
        ab, alphas = _alpha_bars(s.betas), 1 - s.betas.double()
        expected.append(int((s.log_snr.double() < thr).sum()))
        for slip, count in (("complement", T - expected[-1]),
                            ("one-step alpha", (torch.log(alphas / (1 - alphas)) < thr).sum()),
                            ("log10", (torch.log10(ab / (1 - ab)) < thr).sum()),
                            ("no log", (ab / (1 - ab) < thr).sum()),
                            ("log alpha_bar", (torch.log(ab) < thr).sum()),
                            ("threshold ignored", (s.log_snr.double() < -5.0).sum()),
                            ("halved log-SNR", (0.5 * torch.log(ab / (1 - ab)) < thr).sum())):
            slips.setdefault(slip, []).append(int(count))
    if got != expected:
        k = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e)
        name, T, kw, thr = cases[k]
        what = (f"for the {name}{' + zero terminal SNR' if kw else ''} schedule with T = {T} and threshold {thr} "
                f"you counted {got[k]} steps, expected {expected[k]}")
        for slip, counts in slips.items():
            if counts == got:
                fail(ex, what, hints[slip])
        fail(ex, what, "log-SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t)) with alpha_bar_t = prod_{s<=t} (1 - beta_s) "
                       "(Ho et al., 2020, eq. 4; Kingma et al., 2021); count the steps where it is < threshold")
    lin, cos = (make_schedule(n, 1000) for n in ("linear", "cosine"))
    passed(ex, f"at T = 1000 the linear schedule spends {int((lin.log_snr < -5).sum())} steps at log-SNR < -5, "
               f"the cosine schedule {int((cos.log_snr < -5).sum())}.")


def smallest_T_reaching(threshold=THRESHOLD, beta_end=BETA_END, beta_start=1e-4,
                        t_min=SLIDER_MIN, t_max=SLIDER_MAX, step=SLIDER_STEP):
    """The smallest T on the slider's grid (t_min, t_min + step, ..., t_max) for which the linear
    schedule's alpha_bar at the last step is below ``threshold``; None if no T on the grid gets there."""
    for T in range(t_min, t_max + 1, step):
        if _alpha_bars(linear_betas(T, beta_start, beta_end))[-1] < threshold:
            return T
    return None


def check_smallest_T(answer, threshold=THRESHOLD, beta_end=BETA_END):
    """Exercise 2.4 (widget): the smallest T on the schedule explorer's slider (steps of 10) for which
    the linear schedule with ``beta_end`` has alpha_bar at the last step below ``threshold``.

    Any T in (truth - 10, truth] is accepted: they all lie between the last grid value that misses
    the threshold and the first that reaches it.
    """
    ex = "2.4"
    truth = smallest_T_reaching(threshold, beta_end)
    if truth is None:  # only for thresholds that no slider value reaches
        raise ValueError(f"no T up to {SLIDER_MAX} reaches alpha_bar < {threshold} with beta_end = {beta_end}")
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or answer != answer:
        fail(ex, f"expected a number of steps T, got {answer!r}",
             "write the T you read off the widget, e.g. answer = 500")
    if answer != int(answer):
        fail(ex, f"T is a whole number of steps, got {answer}", "the T slider moves in steps of 10")
    answer = int(answer)

    def last_ab(T):
        return _alpha_bars(linear_betas(T, 1e-4, beta_end))[-1].item()

    how = (f"in the widget choose 'linear', beta_end = {beta_end}, leave 'zero terminal SNR' unticked, and move T "
           f"until the readout's alpha_bar at the last step first drops below {threshold:g}")
    if truth - SLIDER_STEP < answer <= truth:
        passed(ex, f"T = {truth} is the first slider value with alpha_bar_(T-1) < {threshold:g} "
                   f"(alpha_bar_(T-1) = {last_ab(truth):.3g}; at T = {truth - SLIDER_STEP} it is "
                   f"{last_ab(truth - SLIDER_STEP):.3g}). DDPM's T = 1000 is only about 1.5 times that.")
        return
    if answer < 1:
        fail(ex, f"T = {answer} is not a number of steps", how)
    ab = last_ab(answer)
    if ab >= threshold:
        fail(ex, f"at T = {answer} the last alpha_bar is {ab:.3g}, not yet below {threshold:g}: T is too small", how)
    fail(ex, f"at T = {answer} the last alpha_bar is {ab:.3g}, below {threshold:g}, but a smaller T already gets there",
         how + "; move T down in steps of 10 until the next step down misses the threshold")
