"""Checks for lesson 09 (applications): inpainting. The known region at the level of step t (9.1), RePaint's
jump back up (9.2), and RePaint's visiting order (9.3). Super-resolution checks go in the separate section at
the end of this file.

The two noisy exercises are judged by their *statistics*, not by matching our random draws: on 16,384 pixels
of +-1, the check measures the coefficient c of x in the result (a regression through the origin) and the
variance v of what is left, and compares (c, v) with the right pair and with the pairs that the usual mistakes
give (the clean image, a missing square root, alpha_bar one step off, 1 - alpha_bar_t instead of the ratio,
...). A coarse schedule (cosine, T = 20) makes neighbouring steps differ enough to tell them apart. Then two
calls with the same generator must differ (fresh noise) and two equally seeded generators must agree.
"""

import math

import torch

from ..inpainting import inpaint_nfe, repaint_timesteps
from ..schedules import make_schedule
from . import expect_tensor, fail, passed

_N_SHAPE = (4, 1, 64, 64)  # 16,384 pixels for the statistics


def _pm_ones(seed, shape=_N_SHAPE):
    """A +-1 image batch (float32): var(x) = 1, so c and v are measured to about 0.6% of sqrt(v)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def _measure(out, x):
    """(c, v): the regression coefficient of out on x through the origin, and the variance of the residual."""
    out, x = out.detach().double(), x.double()
    c = ((out * x).sum() / (x * x).sum()).item()
    v = (out - c * x).var().item()
    return c, v


def _classify(ex, c, v, n, right, mistakes, what, hint):
    """Pass if (c, v) is nearest to ``right`` = (c, v); else fail naming the nearest mistake (``(c, v, hint)``
    triples). Distances are in standard errors of the two estimates."""
    def distance(cv):
        c_k, v_k = cv
        s = max(v_k, 1e-8)
        return max(abs(c - c_k) / math.sqrt(s / n), abs(v - v_k) / (s * math.sqrt(2 / n)))

    d_right = distance(right)
    named = sorted(((distance((c_k, v_k)), h) for c_k, v_k, h in mistakes), key=lambda p: p[0])
    if d_right < 6 and (not named or d_right <= named[0][0]):
        return
    measured = f"{what}: x enters with coefficient {c:.4f} and the noise has variance {v:.4f}"
    expected = f"expected {right[0]:.4f} and {right[1]:.4f}"
    if named and named[0][0] < 6:
        fail(ex, f"{measured} ({expected}), which matches a common mistake", named[0][1])
    fail(ex, f"{measured}; {expected}", hint)


def _expect_untouched(ex, x, x_before, name):
    if not torch.equal(x, x_before):
        fail(ex, f"your function changed the {name} it was given (in place)",
             f"modified in place: build a new tensor (e.g. a * {name} + b * z), do not use {name}.mul_() or +=")


def _expect_fresh_and_reproducible(ex, call, clean_hint):
    """``call(generator)`` -> tensor. Same generator twice: different; equally seeded generators: equal."""
    g = torch.Generator().manual_seed(91)
    first, second = call(g), call(g)
    if torch.equal(first, second):
        fail(ex, "two calls with the same generator returned exactly the same tensor", clean_hint)
    again = call(torch.Generator().manual_seed(91))
    if not torch.equal(first, again):
        fail(ex, "two calls with equally seeded generators gave different results",
             "draw the noise from the generator you are given: torch.randn(x.shape, generator=generator) "
             "(torch.randn_like takes no generator), so that a seeded run is reproducible")


# ----------------------------------------------------------------------------------------------
# Exercise 9.1: the known region at the level of step t (RePaint eq. 8a, corrected)
# ----------------------------------------------------------------------------------------------

def _call_noised(fn, x, t, schedule, generator):
    """Call the learner's noised_known; fail on an in-place change, a wrong shape, or the clean image back."""
    ex = "9.1"
    x_before = x.clone()
    out = fn(x, t, schedule, generator)
    _expect_untouched(ex, x, x_before, "x_known")
    expect_tensor(ex, out, x.shape, f"noised_known at t = {t}")
    if torch.equal(out.to(x.dtype), x):
        fail(ex, f"at t = {t} you returned x_known unchanged",
             "pasting clean x_known: the known region must join a sample at noise level t, so it gets the same "
             "noise, sqrt(alpha_bar_t) x_known + sqrt(1 - alpha_bar_t) z. Pasting the clean image shows the "
             "network a half-clean, half-noisy picture it never saw in training (the lesson's 'clean' method)")
    return out


def check_noised_known(noised_known_fn):
    """``noised_known_fn(x_known, t, schedule, generator)`` -> sqrt(alpha_bar_t) x_known + sqrt(1 - alpha_bar_t) z
    with z ~ N(0, I) drawn afresh from ``generator`` at every call; t in 0..T-1."""
    ex = "9.1"
    hint = ("alpha_bar = schedule.alpha_bars[t]; z = torch.randn(x_known.shape, generator=generator); return "
            "alpha_bar.sqrt() * x_known + (1 - alpha_bar).sqrt() * z (Ho et al., 2020, eq. 4)")
    sqrt_hint = ("noise not square-rooted: (1 - alpha_bar_t) is the VARIANCE of the noise, so z is scaled by "
                 "sqrt(1 - alpha_bar_t). RePaint's Algorithm 1 line 5 prints (1 - alpha_bar_t) eps, a misprint; "
                 "its eq. 8a, N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I), is the right form")
    # 1. the statistics, on a coarse schedule where neighbouring steps differ
    coarse = make_schedule("cosine", 20)
    ab = coarse.alpha_bars64.tolist()
    x = _pm_ones(91)
    n = x.numel()
    for t in (1, 3, 7, 15):
        out = _call_noised(noised_known_fn, x, t, coarse, torch.Generator().manual_seed(92 + t))
        c, v = _measure(out, x)
        a = ab[t]
        mistakes = [
            (1.0, 0.0, "pasting clean x_known: add the noise of level t"),
            (math.sqrt(a), (1 - a) ** 2, sqrt_hint),
            (a, (1 - a) ** 2, "square roots missing: x_known is scaled by sqrt(alpha_bar_t) and z by sqrt(1 - alpha_bar_t)"),
            (a, 1 - a, "x_known is scaled by sqrt(alpha_bar_t), not alpha_bar_t (eq. 4: the mean of q(x_t | x_0))"),
            (math.sqrt(a), 1.0, "the noise must be scaled by sqrt(1 - alpha_bar_t): you added z at full strength"),
            (math.sqrt(1 - a), a, "coefficients swapped: x_known gets sqrt(alpha_bar_t), the noise sqrt(1 - alpha_bar_t)"),
        ]
        for other in (t - 1, t + 1):  # what alpha_bars[t - 1] and alpha_bars[t + 1] give
            b = ab[other]
            mistakes.append((math.sqrt(b), 1 - b,
                             f"off by one: you used alpha_bar of step {other}, not of step t = {t}. The known region joins "
                             "the sample that was just reached, whose level is t itself: use schedule.alpha_bars[t]"))
        _classify(ex, c, v, n, (math.sqrt(a), 1 - a), mistakes, f"at t = {t} (cosine schedule, T = 20)", hint)
    # 2. shapes on the course's schedule, the input left alone, the ends of the range
    schedule = make_schedule("linear", 1000)
    x = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(90)) * 2 - 1
    for t in (0, 500, 999):
        _call_noised(noised_known_fn, x, t, schedule, torch.Generator().manual_seed(t))
    # 3. fresh noise at every call, from the generator
    _expect_fresh_and_reproducible(
        ex, lambda g: noised_known_fn(x[:1], 9, coarse, g),
        "reusing a fixed noise draw: draw a NEW z at every call with torch.randn(x_known.shape, generator=generator); "
        "do not create or re-seed a generator inside, do not keep z from an earlier call. The pasted region needs "
        "fresh noise at every step, like the rest of the sample")
    passed(ex, "sqrt(alpha_bar_t) x_known + sqrt(1 - alpha_bar_t) z at the level of step t, with fresh, reproducible "
               "noise.")


# ----------------------------------------------------------------------------------------------
# Exercise 9.2: RePaint's jump back up (Algorithm 1 line 10, over several steps of a strided grid)
# ----------------------------------------------------------------------------------------------

def check_undo_step(undo_step_fn):
    """``undo_step_fn(x_prev, t_prev, t, schedule, generator)`` -> x_t = sqrt(ab_t / ab_prev) x_prev +
    sqrt(1 - ab_t / ab_prev) z for t > t_prev >= 0, z ~ N(0, I) fresh from ``generator``."""
    ex = "9.2"
    hint = ("ratio = schedule.alpha_bars[t] / schedule.alpha_bars[t_prev]; z = torch.randn(x_prev.shape, "
            "generator=generator); return ratio.sqrt() * x_prev + (1 - ratio).sqrt() * z (eq. 1 of Ho et al. "
            "composed over the steps t_prev + 1 .. t)")
    coarse = make_schedule("cosine", 20)
    fine = make_schedule("linear", 1000)
    x = _pm_ones(93)
    n = x.numel()
    for schedule, t_prev, t in ((coarse, 10, 11), (coarse, 4, 9), (coarse, 2, 8), (fine, 200, 220)):
        ab = schedule.alpha_bars64
        a_prev, a_t = ab[t_prev].item(), ab[t].item()
        r = a_t / a_prev
        beta_t, beta_prev = schedule.betas.double()[t].item(), schedule.betas.double()[t_prev].item()
        x_before = x.clone()
        out = undo_step_fn(x, t_prev, t, schedule, torch.Generator().manual_seed(94 + t))
        _expect_untouched(ex, x, x_before, "x_prev")
        if isinstance(out, torch.Tensor) and out.shape == x.shape and torch.isnan(out).any():
            fail(ex, f"undo from t_prev = {t_prev} to t = {t} gave NaN",
                 "ratio inverted: the jump goes UP to a noisier level, so alpha_bar_t < alpha_bar_prev and the ratio "
                 "alpha_bar_t / alpha_bar_prev is below 1; its inverse makes 1 - ratio negative and its sqrt NaN")
        expect_tensor(ex, out, x.shape, f"undo_step({t_prev} -> {t})")
        c, v = _measure(out, x)
        what = f"jumping from t_prev = {t_prev} up to t = {t} ({schedule.name}, T = {schedule.T})"
        ratio_hint = ("used 1 - alpha_bar_t instead of the ratio: x_prev is not the clean image but a sample at level "
                      "t_prev, which already carries noise; going from t_prev to t multiplies the signal by "
                      "sqrt(alpha_bar_t / alpha_bar_prev) and adds noise of variance 1 - alpha_bar_t / alpha_bar_prev")
        mistakes = [
            (math.sqrt(r), (1 - r) ** 2,
             "noise not square-rooted (the paper's misprint): 1 - alpha_bar_t / alpha_bar_prev is the VARIANCE, so z is "
             "scaled by its square root. RePaint's Algorithm 1 prints the known region's noise as (1 - alpha_bar) eps "
             "(line 5), a misprint; line 10 writes the jump as N(sqrt(1 - beta) x, beta I): standard deviation sqrt(beta)"),
            (math.sqrt(r), 1 - a_t, ratio_hint),
            (math.sqrt(a_t), 1 - a_t, ratio_hint),
            (math.sqrt(r), 0.0, "no noise: the jump back up is a draw from the forward process; add "
                                "sqrt(1 - alpha_bar_t / alpha_bar_prev) z, or the resampling has nothing to resample"),
            (1.0, 0.0, "no noise and no scaling: you returned x_prev unchanged"),
            (r, 1 - r, "x_prev is scaled by sqrt(alpha_bar_t / alpha_bar_prev), not by the ratio itself"),
        ]
        if t - t_prev > 1:
            mistakes.append((math.sqrt(1 - beta_t), beta_t,
                             f"one beta for a jump over {t - t_prev} steps: sqrt(1 - beta_t) x + sqrt(beta_t) z is ONE step of "
                             "eq. 1; a jump over several steps of the grid is their product, alpha_bar_t / alpha_bar_prev"))
        else:
            mistakes.append((math.sqrt(1 - beta_prev), beta_prev,
                             "off by one: the step from t_prev up to t = t_prev + 1 uses beta_t, the beta of the level "
                             "reached (q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I))"))
        _classify(ex, c, v, n, (math.sqrt(r), 1 - r), mistakes, what, hint)
    _expect_fresh_and_reproducible(
        ex, lambda g: undo_step_fn(x[:1], 4, 9, coarse, g),
        "reusing a fixed noise draw: draw a NEW z at every call with torch.randn(x_prev.shape, generator=generator)")
    passed(ex, "x_t = sqrt(alpha_bar_t / alpha_bar_prev) x_prev + sqrt(1 - alpha_bar_t / alpha_bar_prev) z: one step "
               "of the forward process, or several composed, with fresh noise.")


# ----------------------------------------------------------------------------------------------
# Exercise 9.3: RePaint's visiting order
# ----------------------------------------------------------------------------------------------

SETTINGS_9_3 = ((250, 10, 10), (50, 5, 3), (20, 1, 1), (10, 10, 10), (30, 4, 2), (12, 3, 4), (7, 1, 5), (9, 2, 3))


def _order(steps, jump_length, jump_n_sample, up=None, keys=None, n_jumps=None, stop=1):
    """The visiting order in grid indices, with knobs for the usual mistakes (the defaults give the right one)."""
    up = jump_length if up is None else up
    keys = range(0, steps - jump_length, jump_length) if keys is None else keys
    jumps = {j: (jump_n_sample - 1 if n_jumps is None else n_jumps) for j in keys}
    order, i = [], steps
    while i >= stop:
        i -= 1
        order.append(i)
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            for _ in range(up):
                i += 1
                order.append(i)
    return order


def _as_int_list(ex, value, name):
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.ndim != 1:
            fail(ex, f"{name} is a tensor of dtype {value.dtype} and shape {tuple(value.shape)}",
                 "return a list (or 1-D integer tensor) of grid indices")
        return value.tolist()
    if hasattr(value, "tolist"):  # numpy
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        fail(ex, f"{name} should be a list of integers, got {type(value).__name__}"
                 + (f" holding {type(value[0]).__name__}" if isinstance(value, (list, tuple)) and value else ""),
             "return a list of the grid indices visited, e.g. built with order.append(i)")
    return list(value)


def check_repaint_timesteps(my_repaint_timesteps):
    """``my_repaint_timesteps(steps, jump_length, jump_n_sample)`` -> RePaint's visiting order as GRID INDICES
    (steps - 1 first, 0 last; no -1): every jump_length grid steps, at indices 0, jump_length, ... below
    steps - jump_length, go back up jump_length steps, jump_n_sample - 1 times. Equal to
    ``inpainting.repaint_timesteps(steps, jump_length, jump_n_sample, T=steps)`` (diffusers' order)."""
    ex = "9.3"
    hint = ("jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}; start at i = steps; "
            "while i >= 1: step down (i -= 1, append i), and if jumps.get(i, 0) > 0, take one from jumps[i] and go "
            "back up jump_length steps one at a time, appending each")
    for steps, jl, jn in SETTINGS_9_3:
        call = f"my_repaint_timesteps({steps}, {jl}, {jn})"
        got = _as_int_list(ex, my_repaint_timesteps(steps, jl, jn), call)
        expected = repaint_timesteps(steps, jl, jn, T=steps).tolist()
        if got == expected:
            continue
        scale = 1000 // steps
        variants = [
            ([i * scale for i in expected], "grid indices, not timesteps: return indices 0..steps-1 without the "
                                            f"factor T // steps (= {scale} for T = 1000); the sampler scales them"),
            (expected + [-1], "leave out the clean end -1: the inpainting loop adds it after the last entry"),
            (expected[::-1], "reversed: the order starts at the noisiest grid index, steps - 1, and ends at 0"),
            ([steps] + expected, f"off by one at the start: the first entry is steps - 1 = {steps - 1} (step down "
                                 "BEFORE appending)"),
            (_order(steps, jl, jn, up=jl + 1), "off-by-one jump: each jump goes back up exactly jump_length steps"),
            (_order(steps, jl, jn, up=jl - 1), "off-by-one jump: each jump goes back up exactly jump_length steps"),
            (_order(steps, jl, jn, keys=range(0, steps - jl + 1, jl)),
             "off-by-one jump: the jump points are range(0, steps - jump_length, jump_length) (a jump from the last "
             "one, steps - jump_length, would go up past the top of the grid)"),
            (_order(steps, jl, jn, keys=range(jl, steps - jl, jl)),
             "missing final steps' jumps: the jump points start at grid index 0, so the last stretch is resampled too"),
            (_order(steps, jl, jn, stop=2), "missing final steps: walk all the way down to grid index 0"),
            (expected[:-1], "missing final steps: walk all the way down to grid index 0"),
            (_order(steps, jl, jn, n_jumps=jn),
             "wrong count: jump_n_sample counts the passes over each stretch, the first pass included, so there are "
             "jump_n_sample - 1 jumps back from each jump point"),
            (_order(steps, jl, jn, n_jumps=jn - 2) if jn >= 2 else None,
             "wrong count: jump_n_sample - 1 jumps back from each jump point, not jump_n_sample - 2"),
        ]
        for wrong, mistake in variants:
            if wrong is not None and wrong != expected and got == wrong:
                fail(ex, f"{call} does not give RePaint's order: it matches a common mistake", mistake)
        k = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        fail(ex, f"{call} returned {len(got)} entries, expected {len(expected)}; the first difference is at position "
                 f"{k}: expected ...{expected[max(k - 3, 0):k + 3]}..., got ...{got[max(k - 3, 0):k + 3]}...", hint)
    n, nfe = len(repaint_timesteps(250, 10, 10, T=250)), inpaint_nfe(250, "repaint", 10, 10)
    passed(ex, f"RePaint's visiting order, as diffusers' RePaintScheduler; at the paper's setting (250, 10, 10) it has "
               f"{n:,} entries, {nfe:,} of them denoising steps: {nfe / 250:.2f} x the network evaluations of plain "
               "sampling.")


# ----------------------------------------------------------------------------------------------
# Super-resolution (exercises 9.4 and after): checks to come with course_lib.superres
# ----------------------------------------------------------------------------------------------
