"""Samplers as plain functions over a model callable ``model(x_t, t) -> eps``.

* :func:`ddpm_step` / :func:`ddpm_sample`: ancestral sampling (Ho et al., 2020, Algorithm 2).
* :func:`ddim_timesteps`, :func:`ddim_step` / :func:`ddim_sample`: the non-Markovian sampler of
  Song, Meng & Ermon (2021), eq. 12, with eta interpolating between DDIM (eta = 0) and DDPM (eta = 1).

Both follow ``diffusers``' ``DDPMScheduler`` / ``DDIMScheduler`` (epsilon prediction,
"fixed_small" variance) to float32 precision; the tests check this.

The loop over (t, t_prev) pairs calls ``callback(step)`` after every step with a
:class:`SamplerStep`, so that notebooks can plot trajectories or drive a widget.

Conventions, stated once for every sampler, widget and metric of the course:

* ``clip_x0=False`` is the default everywhere. Clipping the model's guess x0_hat to [-1, 1] assumes
  the data live in [-1, 1] (images do, the 2-D toy sets do not), so a call that wants it says so:
  the image lessons and ``python -m course_lib.metrics`` pass ``clip_x0=True`` explicitly.
* Steps take ``(x_t, eps, t, t_prev, schedule, ...)`` in that order: the pair (t, t_prev) is what the
  sampling loop walks over; ``t_prev = -1`` is the clean end (alpha_bar = 1).
* Devices: the samples live where the starting noise lives. Pass ``x_T`` (its device is used) or
  ``device=`` (else the CPU); nothing is guessed from the model. Noise is drawn with ``generator`` on
  the generator's own device and then moved, so a CPU generator drives a GPU model reproducibly.
"""

import math


from typing import NamedTuple

import torch

from .diffusion import _noise_like, eps_from_x0, predict_x0
from .schedules import Schedule, check_t


class SamplerStep(NamedTuple):
    """What a sampler hands to ``callback`` after each step."""

    i: int  # step index, 0 for the first (noisiest) step
    t: int  # the timestep just denoised
    t_prev: int  # the timestep reached (-1: the clean end)
    x_t: torch.Tensor  # the input of this step
    x0_hat: torch.Tensor  # the model's guess of x_0 at this step
    x_prev: torch.Tensor  # the output of this step


def _alpha_bar(schedule, t):
    """alpha_bar_t as a Python float (float64), with alpha_bar_{-1} = 1 (the clean image).

    A plain float, not a tensor: the step coefficients are then host numbers, so a step on the GPU
    never waits for a device-to-host copy (``Schedule.alpha_bars64`` is computed once per schedule,
    in float64: 1 - alpha_bar_t / alpha_bar_prev cancels in float32)."""
    if t < 0:
        return 1.0
    return float(schedule.alpha_bars64[t])


def _check_step_t(t, t_prev, schedule, fn):
    """Validate a step's (t, t_prev) pair and schedule; return them as Python ints."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"{fn} takes (x_t, eps, t, t_prev, schedule, ...): t_prev comes before the schedule, "
                        f"e.g. {fn}(x_t, eps, t, t - 1, schedule); got schedule={schedule!r}")
    check_t(t, schedule.T)
    if isinstance(t, torch.Tensor):
        t = int(t)
    if isinstance(t_prev, torch.Tensor):
        t_prev = int(t_prev)
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must satisfy -1 <= t_prev < t = {t}, got {t_prev}")
    return t, t_prev


def ddpm_step(x_t, eps, t, t_prev, schedule, noise=None, generator=None, clip_x0=False):
    """One ancestral step x_t -> x_{t_prev} (Ho et al., 2020, Algorithm 2 line 4 and eqs. 6-7).

    1. x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), clipped to [-1, 1] if asked;
    2. mean of the posterior q(x_{t_prev} | x_t, x0_hat) (eq. 7);
    3. add sigma_t z with sigma_t^2 = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t ("fixed small"),
       except at the last step (t_prev = -1), which adds no noise.

    ``t_prev = t - 1`` is the step of the paper; a larger jump gives strided ancestral sampling, with
    beta_t replaced by 1 - alpha_bar_t / alpha_bar_prev (as ``diffusers`` does with fewer steps).
    """
    t, t_prev = _check_step_t(t, t_prev, schedule, "ddpm_step")
    alpha_bar, alpha_bar_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    alpha = alpha_bar / alpha_bar_prev  # alpha_t of the (possibly strided) step
    beta = 1 - alpha

    # 1. the model's guess of the clean image
    x0_hat = predict_x0(x_t, eps, t, schedule)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)

    # 2. posterior mean, eq. 7
    coef_x0 = math.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar)
    coef_xt = math.sqrt(alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar)
    mean = coef_x0 * x0_hat + coef_xt * x_t

    # 3. posterior noise, none at the final step
    if t_prev < 0:
        return mean
    variance = max((1 - alpha_bar_prev) / (1 - alpha_bar) * beta, 1e-20)
    return mean + math.sqrt(variance) * _noise_like(x_t, noise, generator)


SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(T, steps, spacing="leading"):
    """The timesteps a ``steps``-step sampler visits, noisiest first: ``steps`` distinct values in 0..T-1
    (a (steps,) long tensor).

    * ``"leading"``: 0, k, 2k, ... with k = T // steps (DDIM paper; diffusers' default);
    * ``"trailing"``: t_i = round(T (steps - i) / steps) - 1 for i = 0..steps-1, so the first step starts
      at the noisiest timestep T - 1 (Lin et al., 2024, Table 2). Computed exactly in integers, rounding
      halves to even as numpy (and so diffusers) does;
    * ``"linspace"``: ``steps`` evenly spaced values from 0 to T-1, rounded.

    Where this differs from ``diffusers`` 0.42.1: its trailing grid, ``round(arange(T, 0, -T / steps)) - 1``
    in floating point, has ``steps + 1`` entries (the last one -1) for some step counts that do not divide T
    (62 of them at T = 1000, e.g. 61); ours always has ``steps``. And its DDIM step goes from t to
    t - T // steps, which for non-dividing step counts is not the next grid point; our samplers always
    step to the next timestep of this grid.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..T = 1..{T}, got {steps!r}")
    i = torch.arange(steps)
    if spacing == "leading":
        ts = i * (T // steps)
    elif spacing == "trailing":
        a = T * (steps - i)
        q, r = a // steps, a % steps  # T (steps - i) / steps = q + r / steps
        round_up = (2 * r > steps) | ((2 * r == steps) & (q % 2 == 1))  # round half to even
        ts = q + round_up.long() - 1
    elif spacing == "linspace":
        ts = torch.round(torch.linspace(0, T - 1, steps, dtype=torch.float64)).long()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; valid spacings are {', '.join(SPACINGS)}")
    return ts.long().sort(descending=True).values


def ddim_step(x_t, eps, t, t_prev, schedule, eta=0.0, noise=None, generator=None, clip_x0=False):
    """One DDIM step x_t -> x_{t_prev} (Song et al., 2021, eq. 12):

        x_prev = sqrt(alpha_bar_prev) x0_hat                       "predicted x_0"
                 + sqrt(1 - alpha_bar_prev - sigma^2) eps           "direction pointing to x_t"
                 + sigma z                                          "random noise"

    with sigma = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev)
    (eq. 16). eta = 0 is deterministic; eta = 1 is ancestral DDPM; eta must lie in [0, 1] (above 1,
    sigma^2 can exceed 1 - alpha_bar_prev and the square root of the middle term is NaN).
    ``t_prev = -1`` means alpha_bar_prev = 1: the step lands on the clean image.

    ``clip_x0=True`` clips x0_hat to [-1, 1] and then re-derives eps from the clipped x0_hat, so that
    the two terms of eq. 12 agree (as GLIDE does; ``diffusers``' ``use_clipped_model_output=True``).
    Without the re-derivation a guided eps pushes x_prev off the data, and strong guidance fails.
    """
    t, t_prev = _check_step_t(t, t_prev, schedule, "ddim_step")
    eta = _check_eta(eta)
    alpha_bar, alpha_bar_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)

    x0_hat = predict_x0(x_t, eps, t, schedule)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
        eps = eps_from_x0(x_t, x0_hat, t, schedule)  # the noise consistent with the clipped x0_hat

    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)  # eq. 16 / eta^2
    sigma = eta * math.sqrt(variance)
    # max(., 0): at eta = 1 and t_prev = -1 the middle coefficient is 0 up to rounding
    x_prev = math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps
    if eta > 0:
        x_prev = x_prev + sigma * _noise_like(x_t, noise, generator)
    return x_prev


def _check_eta(eta):
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:  # also False for NaN
        raise ValueError(f"eta must be a number in [0, 1] (0: DDIM, 1: ancestral DDPM), got {eta}")
    return eta


def ddpm_sample(model, shape, schedule, steps=None, generator=None, clip_x0=False, callback=None,
                device=None, x_T=None):
    """Ancestral sampling (Ho et al., 2020, Algorithm 2) from pure noise.

    ``steps=None`` visits all T timesteps; a smaller number strides through them
    (``ddim_timesteps(T, steps, "leading")``), as ``diffusers``' DDPMScheduler does.
    ``x_T``: the starting noise (else drawn with ``generator`` on ``device``, default the CPU).
    Returns x_0 of ``shape``, e.g. (B, C, H, W).
    """
    timesteps = ddim_timesteps(schedule.T, schedule.T if steps is None else steps, "leading")

    def step(x, eps, t, t_prev):
        return ddpm_step(x, eps, t, t_prev, schedule, generator=generator, clip_x0=clip_x0)

    return _sample_loop(model, shape, schedule, timesteps, step, generator, callback, device, x_T)


def ddim_sample(model, shape, schedule, steps=50, eta=0.0, spacing="leading", generator=None,
                clip_x0=False, callback=None, device=None, x_T=None):
    """DDIM sampling (Song et al., 2021, eq. 12) over ``ddim_timesteps(T, steps, spacing)``.
    ``x_T`` and ``device`` as in :func:`ddpm_sample`."""
    timesteps = ddim_timesteps(schedule.T, steps, spacing)
    eta = _check_eta(eta)

    def step(x, eps, t, t_prev):
        return ddim_step(x, eps, t, t_prev, schedule, eta=eta, generator=generator, clip_x0=clip_x0)

    return _sample_loop(model, shape, schedule, timesteps, step, generator, callback, device, x_T)


def ddim_encode(model, x0, schedule, steps=50, spacing="leading", callback=None):
    """Deterministic DDIM encoding x_0 -> x_T: eq. 12 with eta = 0 run backwards in time
    (Song et al., 2021, Sec. 4.3, eq. 13 read from t to t_next).

    Each step evaluates the model at the **current** timestep t (the less noisy end of the step) and
    moves to the next, noisier one: x_next = sqrt(alpha_bar_next) x0_hat + sqrt(1 - alpha_bar_next) eps.
    The first step starts from the clean image, with eps evaluated at t = 0.
    Decoding the result with ``ddim_sample(..., x_T=code, steps=steps, spacing=spacing)`` gives x_0 back
    up to the discretisation error, which shrinks as ``steps`` grows.
    """
    timesteps = ddim_timesteps(schedule.T, steps, spacing).flip(0).tolist()  # least noisy first
    x = x0
    with torch.no_grad():
        for i, t_next in enumerate(timesteps):
            t = timesteps[i - 1] if i > 0 else -1  # where x is now; -1: the clean image
            # the model is defined on 0..T-1: for the clean image (t = -1) ask it at t = 0
            eps = model(x, torch.full((x.shape[0],), max(t, 0), device=x.device, dtype=torch.long))
            x0_hat = x if t < 0 else predict_x0(x, eps, t, schedule)
            alpha_bar_next = _alpha_bar(schedule, t_next)
            x_next = math.sqrt(alpha_bar_next) * x0_hat + math.sqrt(1 - alpha_bar_next) * eps
            if callback is not None:
                callback(SamplerStep(i, t, t_next, x, x0_hat, x_next))
            x = x_next
    return x


def slerp(z0, z1, alpha):
    """Spherical linear interpolation (Shoemake, 1985) between two noise tensors, treating all entries
    of each as one vector: (sin((1 - alpha) theta) z0 + sin(alpha theta) z1) / sin(theta), theta the
    angle between them. Unlike a straight line, it keeps the norm of Gaussian noise (~ sqrt(dim)), so
    every interpolated code looks like a draw the sampler expects (Song et al., 2021, Sec. 5.3).

    Two numerical guards: the cosine is clamped to [-1, 1] (rounding pushes the cosine of two equal
    vectors just past 1, where arccos is NaN), and for (nearly) parallel or opposite inputs, where
    sin(theta) ~ 0 makes the formula 0 / 0, it returns the straight line (1 - alpha) z0 + alpha z1.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 has shape {tuple(z0.shape)} but z1 has {tuple(z1.shape)}; they must match")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also refuses NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a, b = z0.flatten(), z1.flatten()
    theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
    if torch.sin(theta) < 1e-6:
        return (1 - alpha) * z0 + alpha * z1
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)


@torch.no_grad()
def _sample_loop(model, shape, schedule, timesteps, step, generator, callback, device, x_T):
    """Run ``step`` over consecutive (t, t_prev) pairs; the last pair ends at t_prev = -1."""
    if x_T is None:
        x = _noise_like(torch.empty(shape, device=device or "cpu"), None, generator)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was asked for")
        if device is not None and x_T.device != torch.device(device):
            raise ValueError(f"x_T is on {x_T.device} but device={device!r} was asked for: pass one of them")
        x = x_T
    t_prevs = timesteps[1:].tolist() + [-1]
    for i, (t, t_prev) in enumerate(zip(timesteps.tolist(), t_prevs)):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # (B,)
        eps = model(x, t_batch)
        x_prev = step(x, eps, t, t_prev)
        if callback is not None:
            callback(SamplerStep(i, t, t_prev, x, predict_x0(x, eps, t, schedule), x_prev))
        x = x_prev
    return x
