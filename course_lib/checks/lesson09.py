"""Checks for lesson 09 (applications): inpainting. The known region at the level of step t (9.1), RePaint's
jump back up (9.2), and RePaint's visiting order (9.3). Super-resolution checks go in the separate section at
the end of this file: the guided eps on the low-resolution image (9.4); then the mask widget's question, the
smallest masked area at which the completed digit changes class (9.5).

The two noisy exercises are judged by their *statistics*, not by matching our random draws: on 16,384 pixels
of +-1, the check measures the coefficient c of x in the result (a regression through the origin) and the
variance v of what is left, and compares (c, v) with the right pair and with the pairs that the usual mistakes
give (the clean image, a missing square root, alpha_bar one step off, 1 - alpha_bar_t instead of the ratio,
...). A coarse schedule (cosine, T = 20) makes neighbouring steps differ enough to tell them apart. Then two
calls with the same generator must differ (fresh noise) and two equally seeded generators must agree.
"""

import math

import torch
import torch.nn.functional as F

from ..inpainting import inpaint_nfe, repaint_timesteps
from ..schedules import make_schedule
from ..superres import FACTORS, condition
from . import _close, diagnose, expect_on_meta, expect_tensor, fail, passed

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
             "draw the noise from the generator you are given: torch.randn(x.shape, generator=generator).to(x.device) "
             "(torch.randn_like takes no generator), so that a seeded run is reproducible")


def _expect_on_device(ex, call, name, x):
    """The device probe of 9.1 and 9.2: ``call(generator)`` with the image ``x`` on the meta device (a stand-in for
    the notebook's GPU) and a CPU generator, as the notebook's RePaint loop passes them; the result must be on meta."""
    expect_on_meta(ex, lambda: call(torch.Generator().manual_seed(0)), f"your {name}",
                   f"your function created a tensor on the CPU while {x} was on another device (a GPU in the notebook): "
                   f"draw the noise on the generator's device and move it, z = torch.randn({x}.shape, "
                   f"generator=generator).to({x}.device). (device={x}.device would not do: the notebook's generator is "
                   "a CPU one, and torch draws only on the generator's device)")


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
    hint = ("alpha_bar = schedule.alpha_bars[t]; z = torch.randn(x_known.shape, generator=generator).to(x_known.device); "
            "return alpha_bar.sqrt() * x_known + (1 - alpha_bar).sqrt() * z (Ho et al., 2020, eq. 4)")
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
        "reusing a fixed noise draw: draw a NEW z at every call with torch.randn(x_known.shape, generator=generator)"
        ".to(x_known.device); "
        "do not create or re-seed a generator inside, do not keep z from an earlier call. The pasted region needs "
        "fresh noise at every step, like the rest of the sample")
    # 4. the device probe: x_known on the meta device (a stand-in for the notebook's GPU), a CPU generator
    _expect_on_device(ex, lambda g: noised_known_fn(torch.empty((2, 1, 8, 8), device="meta"), 500, schedule, g),
                      "noised_known", "x_known")
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
            "generator=generator).to(x_prev.device); return ratio.sqrt() * x_prev + (1 - ratio).sqrt() * z (eq. 1 of "
            "Ho et al. composed over the steps t_prev + 1 .. t)")
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
        "reusing a fixed noise draw: draw a NEW z at every call with torch.randn(x_prev.shape, generator=generator)"
        ".to(x_prev.device)")
    _expect_on_device(ex, lambda g: undo_step_fn(torch.empty((2, 1, 8, 8), device="meta"), 200, 220, fine, g),
                      "undo_step", "x_prev")
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
# Super-resolution (exercise 9.4): the guided eps on the low-resolution image (SR3 Sec. 2.4 + CFG)
# ----------------------------------------------------------------------------------------------

class _SRNet(torch.nn.Module):
    """A fixed random network with the signature of the shipped ``mnist-sr``: ``net(x, t)``, x = [x_t, condition]
    (B, 2, H, W) -> eps (B, 1, H, W). Nonlinear in both channels and in t; it records every input it is given."""

    def __init__(self, seed=94):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w1", torch.randn(8, 2, 3, 3, generator=g) * 0.5)
        self.register_buffer("w2", torch.randn(1, 8, 3, 3, generator=g) * 0.5)
        self.calls = []

    def forward(self, x, t):
        ex = "9.4"
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 2:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            fail(ex, f"the network was called with an input of shape {got}",
                 "the SR network takes TWO channels, [x_t, condition] concatenated along the channel dimension: "
                 "torch.cat([x_t, cond], dim=1) is (B, 2, 32, 32); dim=0 would stack them as more images")
        t = torch.as_tensor(t)
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            fail(ex, f"the network got {x.shape[0]} images but t of shape {tuple(t.shape)}",
                 "one timestep per image: for the batch of 2B pass torch.cat([t, t])")
        self.calls.append(x.detach().clone())
        h = torch.tanh(F.conv2d(x.float(), self.w1, padding=1) * (1 + t.float().view(-1, 1, 1, 1) / 1000))
        return F.conv2d(h, self.w2, padding=1)


def _sr_inputs(factor, B=3, seed=95):
    g = torch.Generator().manual_seed(seed + factor)
    x_t = torch.randn((B, 1, 32, 32), generator=g)
    x_lr = torch.rand((B, 1, 32 // factor, 32 // factor), generator=g) * 2 - 1
    t = torch.tensor([999, 500, 20][:B])
    return x_t, t, x_lr


def _row_kinds(rows, candidates):
    """For each (H, W) condition channel in ``rows``, the name of the first candidate (name, (B, 1, H, W)) that one of
    whose images it equals, or "other"."""
    kinds = []
    for r in rows:
        name = next((n for n, c in candidates if any(torch.allclose(r.double(), c_b[0].double(), atol=1e-5)
                                                      for c_b in c)), "other")
        kinds.append(name)
    return kinds


def check_sr_eps(sr_eps_fn):
    """``sr_eps_fn(net, x_t, t, x_lr, w)`` -> eps_u + w (eps_c - eps_u), where eps_c = net([x_t, up(x_lr)], t) with
    up = bicubic upsampling to 32x32 (``superres.condition``), eps_u = net([x_t, 0], t) (the zeroed condition of
    condition dropout), the two channels concatenated along dim 1."""
    ex = "9.4"
    hint = ("cond = F.interpolate(x_lr, size=(32, 32), mode='bicubic', align_corners=False) (= superres.condition(x_lr)); "
            "x_in = torch.cat([torch.cat([x_t, cond], 1), torch.cat([x_t, torch.zeros_like(cond)], 1)]); "
            "eps_c, eps_u = net(x_in, torch.cat([t, t])).chunk(2); return eps_u + w * (eps_c - eps_u)")
    for factor in FACTORS:
        x_t, t, x_lr = _sr_inputs(factor)
        up = lambda mode, **kw: F.interpolate(x_lr, size=(32, 32), mode=mode, **kw)  # noqa: E731
        cond = condition(x_lr)  # (B, 1, 32, 32) bicubic
        candidates = [("bicubic", cond), ("zeros", torch.zeros_like(cond)), ("minus one", -torch.ones_like(cond)),
                      ("bicubic clamped", cond.clamp(-1, 1)), ("nearest", up("nearest")),
                      ("bilinear", up("bilinear", align_corners=False)), ("bilinear", up("bilinear", align_corners=True)),
                      ("bicubic", up("bicubic", align_corners=True)), ("x_t", x_t)]
        ref = _SRNet()
        with torch.no_grad():
            eps_c = ref(torch.cat([x_t, cond], 1), t)
            eps_u = ref(torch.cat([x_t, torch.zeros_like(cond)], 1), t)
        for w in (2.5, 0.0, 1.0, 4.0):
            net = _SRNet()
            x_t_before, x_lr_before = x_t.clone(), x_lr.clone()
            try:
                out = sr_eps_fn(net, x_t, t, x_lr, w)
            except RuntimeError as error:
                if "size" in str(error).lower() and not net.calls:
                    fail(ex, f"with x_lr of shape {tuple(x_lr.shape)} (factor {factor}) your function raised: {error}",
                         "condition not upsampled: the low-res image (B, 1, 32/f, 32/f) must be brought to 32x32 by "
                         "bicubic interpolation before it is concatenated with x_t (superres.condition(x_lr))")
                raise
            if not torch.equal(x_t, x_t_before) or not torch.equal(x_lr, x_lr_before):
                fail(ex, "your function changed x_t or x_lr in place", "build new tensors (torch.cat, F.interpolate)")
            expect_tensor(ex, out, x_t.shape, f"sr_eps(..., x_lr of {tuple(x_lr.shape)}, w={w})")
            if not net.calls:
                fail(ex, "your function never called the network it was given", "call net(x_in, t_in) with the "
                     "inputs you built; do not use another model")
            seen = torch.cat(net.calls)  # (N, 2, 32, 32)
            ch0 = _row_kinds(seen[:, 0], [("x_t", x_t)])
            if any(k != "x_t" for k in ch0):
                if all(k == "x_t" for k in _row_kinds(seen[:, 1], [("x_t", x_t)])):
                    fail(ex, "the network's first channel is not x_t",
                         "channel order swapped: the network was trained on [x_t, condition], x_t FIRST "
                         "(torch.cat([x_t, cond], dim=1)); its output is the noise of channel 0")
                fail(ex, "the network's first input channel is not x_t as given",
                     "pass x_t itself as channel 0 (not noised again, not scaled)")
            kinds = _row_kinds(seen[:, 1], candidates)
            if "nearest" in kinds or "bilinear" in kinds:
                fail(ex, f"the condition channel is the {'nearest' if 'nearest' in kinds else 'bilinear'} upsampling "
                         "of x_lr", "wrong interpolation: mnist-sr was trained on the BICUBIC upsampling, "
                         "F.interpolate(x_lr, size=(32, 32), mode='bicubic', align_corners=False) = "
                         "superres.condition(x_lr); any other condition is an input it never saw")
            if "bicubic clamped" in kinds:
                fail(ex, "the condition channel is the bicubic upsampling clamped to [-1, 1]",
                     "do not clamp the condition: the network was trained on the bicubic upsampling as it comes out "
                     "(it overshoots [-1, 1] a little at edges)")
            if "x_t" in kinds:
                fail(ex, "the condition channel holds x_t", "channel order: [x_t, condition], with the upsampled "
                     "low-res image as the second channel")
            if "minus one" in kinds:
                fail(ex, "your unconditional pass gives the condition channel the value -1",
                     "null condition: the training replaced the condition by ZEROS for 10% of the samples "
                     "(superres.sr_loss, condition dropout), so zeros mean 'no condition'; -1 is the background of "
                     "a digit, i.e. the condition of an empty image")
            if "other" in kinds:
                fail(ex, "the condition channel holds something that is neither the bicubic upsampling of x_lr nor "
                         "zeros", hint)
            if w not in (0.0, 1.0) and "zeros" not in kinds:
                fail(ex, f"at w = {w} the network never saw a zeroed condition",
                     "null condition not used: eps_u is the network's answer WITHOUT the low-res image, the condition "
                     "channel set to zeros (torch.zeros_like(cond)); you evaluated the conditional model only")
            if w not in (0.0, 1.0) and "bicubic" not in kinds:
                fail(ex, f"at w = {w} the network never saw the upsampled low-res image",
                     "condition missing: eps_c needs [x_t, superres.condition(x_lr)]")
            expected = eps_u + w * (eps_c - eps_u)
            mistakes = [
                ((1 + w) * eps_c - w * eps_u,
                 "w and s confused: (1 + w) eps_c - w eps_u is Ho & Salimans' convention; the course's (and "
                 "superres.guided_model's) is eps_u + w (eps_c - eps_u), where w = 1 is the plain conditional model"),
                (eps_u + (w - 1) * (eps_c - eps_u), "off by one: the weight of (eps_c - eps_u) is w itself"),
                (eps_c + w * (eps_u - eps_c),
                 "eps_c and eps_u swapped: start from the unconditional eps (zeroed condition) and move w times along "
                 "eps_c - eps_u; check which half of the 2B batch carries the condition"),
                (eps_c, "no guidance: you returned the conditional eps; combine it with eps_u as eps_u + w (eps_c - eps_u)"),
                (eps_u, "you returned the unconditional eps: the result is eps_u + w (eps_c - eps_u)"),
            ]
            diagnose(ex, out, expected, [(m, h) for m, h in mistakes if not _close(m, expected)],
                     f"sr_eps at w = {w}, factor {factor}", hint)
    passed(ex, "eps_u + w (eps_c - eps_u) with eps_c = net([x_t, bicubic(x_lr)], t) and eps_u = net([x_t, 0], t), for "
               "factors 2, 4 and 8 and w = 0, 1, 2.5, 4.")


# ----------------------------------------------------------------------------------------------
# Exercise 9.5 (widget): the smallest masked area at which the completed digit changes class
# ----------------------------------------------------------------------------------------------

def kept_at(model, schedule, x0, label, columns, x_T, steps, seed, method="replace"):
    """How many completions of the digit ``x0`` (1, 1, H, W), with its rightmost ``columns`` columns masked, the
    evaluation classifier reads as ``label``: one call of ``inpainting.inpaint`` on ``len(x_T)`` copies from the
    starting noise ``x_T`` and ``torch.Generator().manual_seed(seed)``, x0_hat clipped (what the mask explorer runs)."""
    from ..inpainting import inpaint
    from ..metrics import predict_labels

    keep = torch.ones((1, 1) + tuple(x0.shape[-2:]), device=x_T.device)
    if columns > 0:
        keep[..., x0.shape[-1] - columns:] = 0
    x_known = x0.to(x_T.device).expand(len(x_T), *x0.shape[1:])
    with torch.no_grad():
        out = inpaint(model, x_known, keep, schedule, steps=steps, method=method, x_T=x_T,
                      generator=torch.Generator().manual_seed(seed), clip_x0=True)
    return int((predict_labels(out.cpu()) == int(label)).sum())


def check_smallest_columns(answer, model, schedule, x0, label, x_T, steps, seed, step=2, method="replace"):
    """``answer``: the smallest number of masked columns (from the right, on the slider's grid of ``step``) at which
    fewer than half of the mask explorer's completions keep the digit's ``label``."""
    ex = "9.5"
    width = x0.shape[-1]
    S = len(x_T)
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    if isinstance(answer, bool) or not isinstance(answer, int):
        if isinstance(answer, float) and 0 < answer < 1:
            fail(ex, f"answer = {answer} looks like a fraction of the image",
                 "enter the number of masked columns, the value of the size slider (0-32), not the masked area")
        fail(ex, f"answer should be a whole number of columns, got {answer!r}",
             "read the size slider of the 'right columns' preset and enter its value, e.g. answer = 12")
    if not 0 <= answer <= width:
        fail(ex, f"answer = {answer} is outside the slider's range 0..{width}",
             "enter the number of masked columns, the value of the size slider")
    if answer % step:
        fail(ex, f"{answer} columns is not on the slider's grid (steps of {step})",
             f"the slider moves in steps of {step}: enter one of its values")
    kept = kept_at(model, schedule, x0, label, answer, x_T, steps, seed, method)
    if 2 * kept >= S:
        fail(ex, f"at {answer} masked columns {kept} of {S} completions are still read as a {label}",
             "not there yet: look for the first slider value at which FEWER than half of the completions keep the "
             f"digit (at most {(S - 1) // 2} of {S}); the readout says how many do")
    for k in range(0, answer, step):
        k_kept = kept_at(model, schedule, x0, label, k, x_T, steps, seed, method)
        if 2 * k_kept < S:
            fail(ex, f"at {answer} columns only {kept} of {S} keep the {label}, but already at {k} columns only "
                     f"{k_kept} of {S} do", "the question asks for the SMALLEST such number of columns: move the "
                     "slider up from 0 one notch at a time and stop at the first value where fewer than half keep it")
    before = kept_at(model, schedule, x0, label, answer - step, x_T, steps, seed, method) if answer >= step else None
    passed(ex, f"masking the rightmost {answer} columns ({answer / width:.0%} of the pixels) is the first setting at which "
               f"fewer than half of the completions keep the {label} ({kept} of {S}"
               + (f"; at {answer - step} columns {before} of {S} did)." if before is not None else ")."))
