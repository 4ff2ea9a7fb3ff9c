"""Samplers as plain functions over a model callable ``model(x_t, t) -> eps``.

* :func:`ddpm_step` / :func:`ddpm_sample`: ancestral sampling (Ho et al., 2020, Algorithm 2).
* :func:`ddim_timesteps`, :func:`ddim_step` / :func:`ddim_sample`: the non-Markovian sampler of
  Song, Meng & Ermon (2021), eq. 12, with eta interpolating between DDIM (eta = 0) and DDPM (eta = 1).

Both follow ``diffusers``' ``DDPMScheduler`` / ``DDIMScheduler`` (epsilon prediction,
"fixed_small" variance) to float32 precision; the tests check this.

The loop over (t, t_prev) pairs calls ``callback(step)`` after every step with a
:class:`SamplerStep`, so that notebooks can plot trajectories or drive a widget.
"""

from typing import NamedTuple

import torch

from .diffusion import _noise_like, eps_from_x0, predict_x0
from .schedules import check_t


class SamplerStep(NamedTuple):
    """What a sampler hands to ``callback`` after each step."""

    i: int  # step index, 0 for the first (noisiest) step
    t: int  # the timestep just denoised
    t_prev: int  # the timestep reached (-1: the clean end)
    x_t: torch.Tensor  # the input of this step
    x0_hat: torch.Tensor  # the model's guess of x_0 at this step
    x_prev: torch.Tensor  # the output of this step


def _alpha_bar(schedule, t):
    """alpha_bar_t as a float64 scalar, with alpha_bar_{-1} = 1 (the clean image)."""
    if t < 0:
        return torch.tensor(1.0, dtype=torch.float64)
    return torch.cumprod(1.0 - schedule.betas.double(), dim=0)[t]  # float64: 1 - ab_t / ab_prev cancels in float32


def _check_step_t(t, t_prev, T):
    check_t(t, T)
    if isinstance(t, torch.Tensor):
        t = int(t)
    if isinstance(t_prev, torch.Tensor):
        t_prev = int(t_prev)
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must satisfy -1 <= t_prev < t = {t}, got {t_prev}")
    return t, t_prev


def ddpm_step(x_t, eps, t, schedule, noise=None, generator=None, clip_x0=False, t_prev=None):
    """One ancestral step x_t -> x_{t_prev} (Ho et al., 2020, Algorithm 2 line 4 and eqs. 6-7).

    1. x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), clipped to [-1, 1] if asked;
    2. mean of the posterior q(x_{t_prev} | x_t, x0_hat) (eq. 7);
    3. add sigma_t z with sigma_t^2 = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t ("fixed small"),
       except at the last step (t_prev = -1), which adds no noise.

    ``t_prev`` defaults to t - 1; a larger jump gives strided ancestral sampling, with
    beta_t replaced by 1 - alpha_bar_t / alpha_bar_prev (as ``diffusers`` does with fewer steps).
    """
    t, t_prev = _check_step_t(t, t - 1 if t_prev is None else t_prev, schedule.T)
    alpha_bar, alpha_bar_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    alpha = alpha_bar / alpha_bar_prev  # alpha_t of the (possibly strided) step
    beta = 1 - alpha

    # 1. the model's guess of the clean image
    x0_hat = predict_x0(x_t, eps, t, schedule)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)

    # 2. posterior mean, eq. 7
    coef_x0 = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)).float()
    coef_xt = (alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)).float()
    mean = coef_x0 * x0_hat + coef_xt * x_t

    # 3. posterior noise, none at the final step
    if t_prev < 0:
        return mean
    variance = ((1 - alpha_bar_prev) / (1 - alpha_bar) * beta).clamp(min=1e-20).float()
    return mean + variance.sqrt() * _noise_like(x_t, noise, generator)


def ddim_timesteps(T, steps, spacing="leading"):
    """The timesteps a ``steps``-step sampler visits, noisiest first (a (steps,) long tensor).

    * ``"leading"``: 0, k, 2k, ... with k = T // steps (DDIM paper; diffusers' default);
    * ``"trailing"``: counts back from T-1 in strides of T / steps, so the first step starts at
      the noisiest timestep (Lin et al., 2024, Table 2);
    * ``"linspace"``: ``steps`` evenly spaced values from 0 to T-1, rounded.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..T = 1..{T}, got {steps!r}")
    if spacing == "leading":
        ts = torch.arange(steps) * (T // steps)
    elif spacing == "trailing":
        ts = torch.round(torch.arange(T, 0, -T / steps, dtype=torch.float64)).long() - 1
    elif spacing == "linspace":
        ts = torch.round(torch.linspace(0, T - 1, steps, dtype=torch.float64)).long()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; valid spacings are leading, trailing, linspace")
    return ts.long().sort(descending=True).values


def ddim_step(x_t, eps, t, t_prev, schedule, eta=0.0, noise=None, generator=None, clip_x0=False):
    """One DDIM step x_t -> x_{t_prev} (Song et al., 2021, eq. 12):

        x_prev = sqrt(alpha_bar_prev) x0_hat                       "predicted x_0"
                 + sqrt(1 - alpha_bar_prev - sigma^2) eps           "direction pointing to x_t"
                 + sigma z                                          "random noise"

    with sigma = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev)
    (eq. 16). eta = 0 is deterministic; eta = 1 is ancestral DDPM. ``t_prev = -1`` means
    alpha_bar_prev = 1: the step lands on the clean image.

    ``clip_x0=True`` clips x0_hat to [-1, 1] and then re-derives eps from the clipped x0_hat, so that
    the two terms of eq. 12 agree (as GLIDE does; ``diffusers``' ``use_clipped_model_output=True``).
    Without the re-derivation a guided eps pushes x_prev off the data, and strong guidance fails.
    """
    t, t_prev = _check_step_t(t, t_prev, schedule.T)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    alpha_bar, alpha_bar_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)

    x0_hat = predict_x0(x_t, eps, t, schedule)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
        eps = eps_from_x0(x_t, x0_hat, t, schedule)  # the noise consistent with the clipped x0_hat

    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)  # eq. 16 / eta^2
    sigma = eta * variance.sqrt()
    x_prev = alpha_bar_prev.sqrt().float() * x0_hat + (1 - alpha_bar_prev - sigma**2).sqrt().float() * eps
    if eta > 0:
        x_prev = x_prev + sigma.float() * _noise_like(x_t, noise, generator)
    return x_prev


def ddpm_sample(model, shape, schedule, steps=None, generator=None, clip_x0=False, callback=None,
                device=None, x_T=None):
    """Ancestral sampling (Ho et al., 2020, Algorithm 2) from pure noise.

    ``steps=None`` visits all T timesteps; a smaller number strides through them
    (``ddim_timesteps(T, steps, "leading")``), as ``diffusers``' DDPMScheduler does.
    ``x_T``: the starting noise (else drawn with ``generator``). Returns x_0 (B, C, H, W).
    """
    timesteps = ddim_timesteps(schedule.T, schedule.T if steps is None else steps, "leading")

    def step(x, eps, t, t_prev):
        return ddpm_step(x, eps, t, schedule, generator=generator, clip_x0=clip_x0, t_prev=t_prev)

    return _sample_loop(model, shape, schedule, timesteps, step, generator, callback, device, x_T)


def ddim_sample(model, shape, schedule, steps=50, eta=0.0, spacing="leading", generator=None,
                clip_x0=False, callback=None, device=None, x_T=None):
    """DDIM sampling (Song et al., 2021, eq. 12) over ``ddim_timesteps(T, steps, spacing)``."""
    timesteps = ddim_timesteps(schedule.T, steps, spacing)

    def step(x, eps, t, t_prev):
        return ddim_step(x, eps, t, t_prev, schedule, eta=eta, generator=generator, clip_x0=clip_x0)

    return _sample_loop(model, shape, schedule, timesteps, step, generator, callback, device, x_T)


@torch.no_grad()
def _sample_loop(model, shape, schedule, timesteps, step, generator, callback, device, x_T):
    """Run ``step`` over consecutive (t, t_prev) pairs; the last pair ends at t_prev = -1."""
    if x_T is None:
        device = device or _model_device(model)
        x = torch.randn(shape, generator=generator, device=device)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was asked for")
        x = x_T
    t_prevs = torch.cat([timesteps[1:], torch.tensor([-1])])
    for i, (t, t_prev) in enumerate(zip(timesteps.tolist(), t_prevs.tolist())):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # (B,)
        eps = model(x, t_batch)
        x_prev = step(x, eps, t, t_prev)
        if callback is not None:
            callback(SamplerStep(i, t, t_prev, x, predict_x0(x, eps, t, schedule), x_prev))
        x = x_prev
    return x


def _model_device(model):
    """The device of a module's parameters (CPU for plain functions)."""
    module = getattr(model, "model", model)  # guided wrappers keep the network in .model
    params = getattr(module, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")
