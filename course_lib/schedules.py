"""Noise schedules: the betas that define the forward process, and what follows from them.

The forward process of DDPM (Ho et al., 2020, eq. 2) adds Gaussian noise in T small steps,

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I),

and composes to a closed form (Ho et al., 2020, eq. 4):

    q(x_t | x_0) = N(x_t; sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),
    alpha_t = 1 - beta_t,   alpha_bar_t = prod_{s <= t} alpha_s.

Time convention of the whole course: integer t in 0..T-1, t = 0 the least noisy step, so
``alpha_bars[0] = alphas[0]`` (close to 1) and ``alpha_bars[T-1]`` is close to 0.
"""

import math
from dataclasses import dataclass

import torch

SCHEDULE_NAMES = ("linear", "cosine")


def linear_betas(T, beta_start=1e-4, beta_end=0.02):
    """Linearly spaced betas from ``beta_start`` to ``beta_end`` (Ho et al., 2020, Sec. 4).

    DDPM uses T = 1000, beta_1 = 1e-4, beta_T = 0.02. The range is *not* rescaled with T, as in
    ``diffusers``: with a small T the last step is far from pure noise (lesson 02 shows this).
    """
    _check_T(T)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64).float()


def cosine_betas(T, s=0.008, max_beta=0.999):
    """The cosine schedule of Nichol & Dhariwal (2021), eq. 17.

    alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), turned into
    betas by beta_t = 1 - alpha_bar(t+1) / alpha_bar(t), clipped at ``max_beta`` = 0.999 to avoid
    a singularity at the end (their Sec. 3.2). Same as ``diffusers``' ``squaredcos_cap_v2``.
    """
    _check_T(T)

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64).float()


def rescale_zero_terminal_snr(betas):
    """Shift and scale sqrt(alpha_bar) so that the last step has SNR exactly 0.

    Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    Algorithm 1: keep sqrt(alpha_bar_0), set sqrt(alpha_bar_{T-1}) to 0, and map the values in
    between linearly. Without this, the model never sees pure noise during training but is asked
    to start from it when sampling.
    """
    alphas = 1.0 - betas.double()
    sqrt_ab = torch.cumprod(alphas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)  # now sqrt_ab[-1] == 0
    alpha_bars = sqrt_ab**2
    alphas = torch.cat([alpha_bars[:1], alpha_bars[1:] / alpha_bars[:-1]])
    return (1.0 - alphas).float()


@dataclass(frozen=True)
class Schedule:
    """Everything the forward process needs, indexed by t = 0..T-1 (float32 tensors)."""

    name: str
    betas: torch.Tensor

    @property
    def T(self):
        return len(self.betas)

    @property
    def alphas(self):
        return 1.0 - self.betas

    @property
    def alpha_bars(self):
        # Ho et al. (2020), eq. 4: alpha_bar_t = prod_{s<=t} alpha_s (accumulated in float64).
        return torch.cumprod(1.0 - self.betas.double(), dim=0).float()

    @property
    def snr(self):
        """Signal-to-noise ratio SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al., 2021, eq. 2)."""
        ab = self.alpha_bars.double()
        return (ab / (1 - ab)).float()

    @property
    def log_snr(self):
        """log SNR(t); -inf at a zero-terminal-SNR step."""
        return torch.log(self.snr)

    def __repr__(self):
        return f"Schedule({self.name!r}, T={self.T})"


def make_schedule(name, T=1000, *, zero_terminal_snr=False, **kwargs):
    """Build a :class:`Schedule` by name: ``"linear"`` or ``"cosine"``.

    ``kwargs`` go to :func:`linear_betas` (``beta_start``, ``beta_end``) or
    :func:`cosine_betas` (``s``, ``max_beta``). ``zero_terminal_snr=True`` applies
    :func:`rescale_zero_terminal_snr`.
    """
    if name == "linear":
        betas = linear_betas(T, **kwargs)
    elif name == "cosine":
        betas = cosine_betas(T, **kwargs)
    else:
        raise ValueError(f"unknown schedule {name!r}; valid names are {', '.join(SCHEDULE_NAMES)}")
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
        name = f"{name}+zero-terminal-snr"
    return Schedule(name, betas)


def _check_T(T):
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer number of steps, got {T!r}")


def check_t(t, T):
    """Raise ``ValueError`` unless every t is an integer in 0..T-1.

    torch's negative indexing would silently turn t = -1 into t = T-1; we refuse instead.
    Returns ``t`` as a long tensor.
    """
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"timesteps must be integers in 0..{T - 1}, got dtype {t.dtype}")
    t = t.long()
    if t.numel() and (t.min() < 0 or t.max() > T - 1):
        bad = t[(t < 0) | (t > T - 1)].flatten()[0].item()
        raise ValueError(f"timestep {bad} is out of range: valid timesteps are 0..{T - 1} (T = {T})")
    return t


def at(values, t, x):
    """Pick ``values[t]`` and shape it to broadcast against ``x``: the one broadcasting helper.

    ``values``: (T,) tensor; ``t``: int or (B,) tensor; returns (B, 1, ..., 1) matching x.ndim
    (or a 0-d tensor for an int t), on x's device and dtype.
    """
    t = check_t(t, len(values))
    out = values.to(x.device)[t.to(x.device)].to(x.dtype)
    if out.ndim == 0:
        return out
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"got {out.shape[0]} timesteps for a batch of {x.shape[0]}")
    return out.reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1) for images
