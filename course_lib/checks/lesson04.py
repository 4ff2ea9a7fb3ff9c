"""Checks for lesson 04 (DDIM): the DDIM step with eta, timestep spacings, slerp, deterministic
encoding, and the widget-driven "how many steps until the samples stop changing" question.

Each check runs the learner's function on small inputs and compares its *behaviour* with
``course_lib.samplers`` (the reference implementation) or with known values. Where a model is
needed, :func:`gaussian_eps_model` gives an exact noise predictor for Gaussian data, so the checks
run in a fraction of a second and need no pretrained network.
"""

import math

import torch

from ..samplers import ddim_encode, ddim_sample, ddim_step, ddim_timesteps, slerp
from ..schedules import at, make_schedule
from . import expect_close, expect_on_meta, expect_tensor, fail, passed


def gaussian_eps_model(schedule, mu, std):
    """The exact noise predictor for data x_0 ~ N(mu, std^2 I) (elementwise), a toy "trained model".

    With x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, x_t and eps are jointly Gaussian and

        E[eps | x_t] = sqrt(1 - alpha_bar) (x_t - sqrt(alpha_bar) mu) / (alpha_bar std^2 + 1 - alpha_bar),

    which is what a perfectly trained epsilon-network would output. ``mu`` broadcasts against x_t
    (e.g. a (1, C, H, W) pattern). Returns a callable ``model(x_t, t)`` with t an int or (B,) tensor.
    """
    mu = torch.as_tensor(mu, dtype=torch.float32)

    def model(x_t, t):
        t = torch.as_tensor(t).long().expand(x_t.shape[0])
        alpha_bar = at(schedule.alpha_bars, t, x_t)  # (B, 1, 1, 1)
        return (1 - alpha_bar).sqrt() * (x_t - alpha_bar.sqrt() * mu) / (alpha_bar * std**2 + 1 - alpha_bar)

    return model


# ----------------------------------------------------------------------------------------------
# Exercise 4.1: one DDIM step with eta (Song et al., 2021, eqs. 12 and 16)
# ----------------------------------------------------------------------------------------------

def check_ddim_step(ddim_step_fn):
    """``ddim_step_fn(x_t, eps, t, t_prev, schedule, eta=0.0, noise=None)`` against ``samplers.ddim_step``."""
    ex = "4.1"
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(4)
    x_t = torch.randn((3, 1, 6, 6), generator=g)
    eps = torch.randn((3, 1, 6, 6), generator=g)
    noise = torch.randn((3, 1, 6, 6), generator=g)
    hint_eq12 = ("eq. 12 of Song et al. (2021): x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps "
                 "+ sigma z, with x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t); use the cumulative "
                 "schedule.alpha_bars, not schedule.alphas")
    hint_sigma = ("eq. 16: sigma = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev), "
                  "and the 'direction to x_t' term shrinks to sqrt(1 - alpha_bar_prev - sigma^2) so that the total variance stays right")
    hint_end = ("t_prev = -1 means 'the clean image': alpha_bar_prev = 1 there. Careful: schedule.alpha_bars[-1] is the "
                "LAST (noisiest) entry in Python, not 1")

    # eta = 0: deterministic, several (t, t_prev) pairs including a strided jump and the last step
    for t, t_prev in [(999, 979), (500, 499), (260, 160), (20, 0)]:
        out = ddim_step_fn(x_t, eps, t, t_prev, schedule, eta=0.0)
        expect_tensor(ex, out, x_t.shape, f"ddim_step(t={t}, t_prev={t_prev}, eta=0)")
        if not torch.allclose(out, ddim_step_fn(x_t, eps, t, t_prev, schedule, eta=0.0)):
            fail(ex, f"two calls of ddim_step(t={t}, t_prev={t_prev}, eta=0) on the same input gave different results",
                 "eta = 0 gives sigma = 0 (eq. 16): the DDIM step is deterministic and adds no noise")
        expect_close(ex, out, ddim_step(x_t, eps, t, t_prev, schedule, eta=0.0), hint_eq12,
                     name=f"ddim_step(t={t}, t_prev={t_prev}, eta=0)", atol=1e-4)
    out = ddim_step_fn(x_t, eps, 40, -1, schedule, eta=0.0)
    if isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
        fail(ex, "ddim_step(t=40, t_prev=-1, eta=0) contains NaN or inf", hint_end)
    expect_tensor(ex, out, x_t.shape, "ddim_step(t=40, t_prev=-1, eta=0)")
    expect_close(ex, out, ddim_step(x_t, eps, 40, -1, schedule, eta=0.0), hint_end,
                 name="ddim_step(t=40, t_prev=-1, eta=0)", atol=1e-4)

    # eta = 0 ignores the noise
    a = ddim_step_fn(x_t, eps, 300, 250, schedule, eta=0.0, noise=noise)
    if not torch.allclose(a, ddim_step(x_t, eps, 300, 250, schedule, eta=0.0), atol=1e-4):
        fail(ex, "with eta = 0 your step changed when noise was passed in",
             "eta = 0 gives sigma = 0: the DDIM step is deterministic and must not add the noise")

    # eta > 0 with the same noise as the reference
    for eta in (1.0, 0.5):
        for t, t_prev in [(700, 650), (100, 99)]:
            out = ddim_step_fn(x_t, eps, t, t_prev, schedule, eta=eta, noise=noise)
            expect_tensor(ex, out, x_t.shape, f"ddim_step(t={t}, t_prev={t_prev}, eta={eta})")
            expect_close(ex, out, ddim_step(x_t, eps, t, t_prev, schedule, eta=eta, noise=noise), hint_sigma,
                         name=f"ddim_step(t={t}, t_prev={t_prev}, eta={eta}) with the given noise", atol=1e-4)
    passed(ex, "your DDIM step matches eq. 12 for eta = 0, 0.5 and 1, strided jumps and the final step.")


# ----------------------------------------------------------------------------------------------
# Exercise 4.2: timestep spacings
# ----------------------------------------------------------------------------------------------

def check_ddim_timesteps(ddim_timesteps_fn):
    """``ddim_timesteps_fn(T, steps, spacing)`` for "leading" and "trailing", against ``samplers.ddim_timesteps``."""
    ex = "4.2"
    hints = {
        "leading": "leading: k = T // steps and the timesteps 0, k, 2k, ..., (steps - 1) k, returned noisiest first",
        "trailing": ("trailing: start at T - 1 and step back by T / steps (a float), i.e. round(T - i * T / steps) - 1 "
                     "for i = 0..steps-1; the first one must be T - 1 (Lin et al., 2024)"),
    }
    for spacing in ("leading", "trailing"):
        for T, steps in [(1000, 10), (1000, 50), (1000, 7), (1000, 3), (100, 1), (50, 50), (1000, 1000)]:
            out = ddim_timesteps_fn(T, steps, spacing)
            expected = ddim_timesteps(T, steps, spacing)
            name = f"ddim_timesteps({T}, {steps}, {spacing!r})"
            if not isinstance(out, torch.Tensor):
                fail(ex, f"{name} returned a {type(out).__name__}, expected a tensor", "return torch.tensor(...) of integers")
            if out.is_floating_point():
                fail(ex, f"{name} returned floats ({out.dtype}); timesteps are integers", "round, then .long()")
            if tuple(out.shape) != (steps,):
                fail(ex, f"{name} has shape {tuple(out.shape)}, expected ({steps},)", hints[spacing])
            if len(out) > 1 and out[0] < out[-1]:
                fail(ex, f"{name} is in increasing order: {out[:5].tolist()}...",
                     "the sampler visits the noisiest timestep first: sort descending")
            if out.min() < 0 or out.max() > T - 1:
                fail(ex, f"{name} leaves 0..T-1: min {out.min().item()}, max {out.max().item()}",
                     "valid timesteps are 0..T-1 " + hints[spacing])
            if not torch.equal(out.long(), expected):
                k = int((out.long() != expected).nonzero()[0])
                fail(ex, f"{name}[{k}] = {out[k].item()}, expected {expected[k].item()} "
                         f"(expected starts {expected[:4].tolist()}, yours {out[:4].tolist()})", hints[spacing])
    try:
        ddim_timesteps_fn(1000, 10, "uniform")
    except ValueError:
        pass
    else:
        fail(ex, "ddim_timesteps(1000, 10, 'uniform') returned without an error: an unknown spacing must raise "
                 "a ValueError", "end with: else: raise ValueError(f\"unknown spacing {spacing!r}; valid spacings are "
                 "leading, trailing\") (falling through would silently use some other spacing)")
    passed(ex, "leading and trailing spacings match course_lib for every (T, steps) tried, and an unknown "
               "spacing raises a ValueError.")


# ----------------------------------------------------------------------------------------------
# Exercise 4.3: spherical interpolation
# ----------------------------------------------------------------------------------------------

def _slerp(z0, z1, alpha):
    """Reference slerp over all entries of z0 and z1 as one vector (Shoemake, 1985), in float64."""
    return slerp(z0.double(), z1.double(), alpha).to(z0.dtype)


def check_slerp(slerp_fn):
    """``slerp_fn(z0, z1, alpha)``: endpoints exact, norm kept, a known value, and the general formula."""
    ex = "4.3"
    hint = ("slerp(z0, z1, a) = sin((1 - a) theta) / sin(theta) * z0 + sin(a theta) / sin(theta) * z1, with "
            "theta = arccos(<z0, z1> / (|z0| |z1|)) computed over ALL entries (flatten), in radians")
    # a known value: orthogonal unit vectors, halfway: (e0 + e1) / sqrt(2)
    e0, e1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    mid = slerp_fn(e0, e1, 0.5)
    expect_tensor(ex, mid, (3,), "slerp(e0, e1, 0.5)")
    expect_close(ex, mid, torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2), hint + " (a straight line would give [0.5, 0.5, 0])",
                 name="slerp([1,0,0], [0,1,0], 0.5)", atol=1e-5)
    expect_close(ex, slerp_fn(e0, e1, 1 / 3), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6), 0.0]), hint,
                 name="slerp([1,0,0], [0,1,0], 1/3)", atol=1e-5)

    g = torch.Generator().manual_seed(43)
    z0, z1 = torch.randn((2, 1, 8, 8), generator=g), torch.randn((2, 1, 8, 8), generator=g)
    for alpha in (0.0, 1.0):
        out = slerp_fn(z0, z1, alpha)
        expect_tensor(ex, out, z0.shape, f"slerp(z0, z1, {alpha})")
        expect_close(ex, out, z0 if alpha == 0 else z1, "alpha = 0 must give z0 and alpha = 1 must give z1 exactly",
                     name=f"slerp(z0, z1, {alpha})", atol=1e-5)
    for alpha in (0.25, 0.5, 0.8):
        out = slerp_fn(z0, z1, alpha)
        expect_tensor(ex, out, z0.shape, f"slerp(z0, z1, {alpha})")
        expect_close(ex, out, _slerp(z0, z1, alpha), hint, name=f"slerp(z0, z1, {alpha}) on (2, 1, 8, 8) noise", atol=1e-4)

    # the same vector twice: the angle is 0 (sin(theta) = 0), and in float32 the computed cosine often rounds to
    # just above 1, where arccos is NaN. Exactly-1 cosines first (ones: <z, z> = |z|^2 exactly), then rounded ones.
    hint_parallel = ("for (nearly) parallel inputs sin(theta) = 0 and the formula is 0 / 0: when sin(theta) < 1e-6, "
                     "return the straight line (1 - alpha) z0 + alpha z1 instead")
    hint_clamp = ("rounding pushed the cosine of two equal vectors just above 1 and torch.arccos returned NaN: clamp "
                  "the cosine to [-1, 1] before arccos")
    ones = torch.ones((4, 1, 2, 2))  # 16 entries: |z| = 4 and <z, z> = 16, both exact in float32
    same = slerp_fn(ones, ones.clone(), 0.3)
    if not isinstance(same, torch.Tensor) or not torch.isfinite(same).all():
        fail(ex, "slerp(z, z, 0.3) of two equal vectors returned NaN or inf (it should return z)", hint_parallel)
    expect_close(ex, same, ones, hint_parallel, name="slerp(z, z, 0.3) of two equal vectors", atol=1e-5)
    for _ in range(30):  # about a third of random vectors round their self-cosine above 1 in float32
        z = torch.randn((2, 1, 8, 8), generator=g)
        out = slerp_fn(z, z.clone(), 0.5)
        if not torch.isfinite(out).all():
            fail(ex, "slerp(z, z, 0.5) of two equal random vectors returned NaN", hint_clamp)
        expect_close(ex, out, z, hint_parallel, name="slerp(z, z, 0.5) of two equal vectors", atol=1e-4)

    # two vectors of equal norm: every point on the arc has that norm too
    u = z1 * (z0.norm() / z1.norm())
    norms = [slerp_fn(z0, u, a).norm().item() for a in (0.2, 0.5, 0.7)]
    if max(abs(n / z0.norm().item() - 1) for n in norms) > 1e-4:
        fail(ex, f"interpolating two vectors of norm {z0.norm().item():.3f} gave norms {[round(n, 3) for n in norms]}",
             "slerp moves along the great circle, so the norm must stay the same; linear interpolation shrinks it")
    passed(ex, "endpoints exact, norms kept on the arc, and the values match the slerp formula.")


# ----------------------------------------------------------------------------------------------
# Exercise 4.4: deterministic encoding x_0 -> x_T
# ----------------------------------------------------------------------------------------------

class _Recording:
    """Wraps a model callable and records the timestep of each call (the first entry of its (B,) t)."""

    def __init__(self, model):
        self.model, self.timesteps = model, []

    def __call__(self, x, t):
        self.timesteps.append(int(torch.as_tensor(t).flatten()[0]))
        return self.model(x, t)


class _DeviceProbe:
    """A model callable for the device probe: eps = 0 on x's device, and a failure if the timesteps it is given are
    a tensor on the CPU while x is not (in the notebook: CPU timesteps for a U-Net and images on the GPU)."""

    def __call__(self, x, t):
        if isinstance(t, torch.Tensor) and t.device.type == "cpu" and x.device.type != "cpu":
            fail("4.4", f"with x_0 on another device than the CPU (the meta device, standing in for a GPU), your "
                        f"encoder called the model with x on {x.device.type} but t on {t.device.type}",
                 "your function created the timesteps on the CPU while the images were on another device (a GPU in "
                 "the notebook): make them where x is, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), "
                 "as the course's samplers hand them to a model")
        return torch.zeros_like(x)


def check_ddim_encode(ddim_encode_fn):
    """``ddim_encode_fn(model, x0, schedule, steps)`` on the exact Gaussian toy model: decoding its output
    with ``samplers.ddim_sample(..., x_T=...)`` must give x_0 back, and encoding data must give
    noise-like x_T."""
    ex = "4.4"
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(44)
    mu = 0.6 * torch.tanh(2 * torch.randn((1, 1, 8, 8), generator=g))  # a fixed "digit" pattern
    std = 0.3
    model = gaussian_eps_model(schedule, mu, std)
    x0 = mu + std * torch.randn((16, 1, 8, 8), generator=g)
    hint = ("go UP the timesteps of ddim_timesteps(T, steps, 'leading') in increasing order, starting from x_0 at "
            "'t = -1' (alpha_bar = 1); at each step predict eps = model(x, t_current) (t = 0 for the clean image), "
            "form x0_hat, and move to the next, larger t with the eta = 0 update "
            "x_next = sqrt(alpha_bar_next) x0_hat + sqrt(1 - alpha_bar_next) eps")
    for steps in (100, 40):
        recorder = _Recording(model)
        x_T = ddim_encode_fn(recorder, x0, schedule, steps)
        expect_tensor(ex, x_T, x0.shape, f"ddim_encode(..., steps={steps})")
        again = ddim_encode_fn(model, x0, schedule, steps)
        if not torch.allclose(x_T, again):
            fail(ex, "two calls on the same x_0 gave different encodings",
                 "the encoding is deterministic (eta = 0): no random noise anywhere")
        if (x_T - x0).abs().max() < 1e-3:
            fail(ex, "your encoding returned x_0 unchanged", hint)
        grid = ddim_timesteps(schedule.T, steps, "leading").flip(0).tolist()  # increasing: 0, k, 2k, ...
        current = [0] + grid[:-1]  # where x is when eps is taken (the clean image: t = 0)
        if recorder.timesteps == grid and grid != current:
            fail(ex, f"your encoder evaluates the model at the NEXT timestep of each step ({recorder.timesteps[:4]}... "
                     f"instead of {current[:4]}...)", "take eps = model(x, t) at the CURRENT point and timestep, where x "
                     "is now, then move to t_next; evaluating at t_next uses a noise level x has not reached yet")
        if recorder.timesteps != current:
            fail(ex, f"your encoder called the model at timesteps {recorder.timesteps[:5]}... "
                     f"({len(recorder.timesteps)} calls), expected {current[:5]}... ({len(current)} calls)", hint)
        std_T, mean_T = x_T.std().item(), x_T.mean().item()
        if not (0.8 < std_T < 1.2 and abs(mean_T) < 0.2):
            fail(ex, f"encoding data gave x_T with mean {mean_T:.3f} and std {std_T:.3f}; "
                     "at the noisy end it should look like N(0, I) (mean about 0, std about 1)", hint)
        expect_close(ex, x_T, ddim_encode(model, x0, schedule, steps=steps), hint,
                     name=f"ddim_encode(..., steps={steps})", atol=1e-3, rtol=1e-3)
        x0_rec = ddim_sample(model, x0.shape, schedule, steps=steps, x_T=x_T)
        err = (x0_rec - x0).abs().mean().item()
    # the device probe: x_0 on the meta device (a stand-in for the notebook's GPU), eps = 0 on x's device
    expect_on_meta(ex, lambda: ddim_encode_fn(_DeviceProbe(), x0[:2].to("meta"), schedule, 10), "your encoder",
                   "your function created a tensor on the CPU while x_0 was on another device (a GPU in the notebook): "
                   "make new tensors on x's device (torch.full((B,), t, dtype=torch.long, device=x.device)), or "
                   "multiply x by plain numbers and 0-dim tensors of the schedule, never by a (B, 1, 1, 1) tensor "
                   "built on the CPU")
    passed(ex, f"decode(encode(x_0)) gives x_0 back (mean error {err:.4f} at 40 steps on the toy model), "
               f"and the codes look like N(0, I).")


# ----------------------------------------------------------------------------------------------
# Exercise 4.5 (widget): when do the samples stop changing?
# ----------------------------------------------------------------------------------------------

def sample_change(model, schedule, x_T, steps, reference, clip_x0=True):
    """Mean absolute difference (pixels in [-1, 1], clipped as displayed) between DDIM (eta = 0,
    leading spacing) samples from ``x_T`` at ``steps`` and the ``reference`` images."""
    samples = ddim_sample(model, x_T.shape, schedule, steps=steps, x_T=x_T, clip_x0=clip_x0)
    return (samples.clamp(-1, 1) - reference.clamp(-1, 1)).abs().mean().item()


SLACK = 2  # "a notch or two off is fine": answers up to 2 steps above the smallest are accepted


def check_converged_steps(answer, model, schedule, x_T, threshold=0.015, reference_steps=200, clip_x0=True):
    """Widget exercise: ``answer`` should be the smallest number of DDIM steps whose samples from ``x_T``
    differ from the ``reference_steps``-step samples by less than ``threshold`` (mean absolute pixel
    difference). Accepted: the change at ``answer`` is below the threshold, and the change at
    ``answer - SLACK - 1`` is not (so an answer more than ``SLACK`` steps too high fails). ``clip_x0`` must
    match the widget's."""
    ex = "4.5"
    if isinstance(answer, bool) or not isinstance(answer, int):
        fail(ex, f"answer should be a whole number of steps, got {answer!r}", "read the steps slider and type that integer")
    if not 1 <= answer <= reference_steps:
        fail(ex, f"answer = {answer} is outside the slider's range 1..{reference_steps}",
             "move the steps slider and watch the 'change vs reference' readout")
    with torch.no_grad():
        reference = ddim_sample(model, x_T.shape, schedule, steps=reference_steps, x_T=x_T, clip_x0=clip_x0)
        change = sample_change(model, schedule, x_T, answer, reference, clip_x0)
        if change >= threshold:
            fail(ex, f"at {answer} steps the samples still differ from the {reference_steps}-step samples by "
                     f"{change:.4f} (the target is < {threshold})",
                 "set eta = 0 (deterministic) and move the steps slider UP until the readout drops below the threshold")
        lower = max(1, answer - SLACK - 1)
        below = ""
        if lower < answer:
            change_lower = sample_change(model, schedule, x_T, lower, reference, clip_x0)
            if change_lower < threshold:
                fail(ex, f"{answer} steps works, but so does {lower} (change {change_lower:.4f} < {threshold}): "
                         "you are asked for the SMALLEST number of steps",
                     "move the steps slider DOWN until the readout rises above the threshold, then take one notch up")
            below = f"; at {lower} steps by {change_lower:.4f}"
    passed(ex, f"at {answer} steps the samples differ from the {reference_steps}-step ones by {change:.4f} "
               f"(< {threshold}){below}. Beyond this, extra steps buy time, not different pictures.")
