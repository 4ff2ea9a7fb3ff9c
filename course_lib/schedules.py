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
import warnings
from dataclasses import dataclass
from functools import cached_property

import torch

SCHEDULE_NAMES = ("linear", "cosine")

# Largest terminal alpha_bar_{T-1} that :func:`check_reaches_noise` accepts silently. At 0.01 the last
# step still keeps sqrt(0.01) = 10% of the image's amplitude (SNR ~ 0.01), which is visible by eye in
# lesson 02's strip, while sampling starts from pure N(0, I) that the model never saw in training.
# The shipped T = 1000 schedules are far below it (linear: 4.0e-5, cosine: ~0); so is Stable Diffusion's
# (0.0047), which Lin et al. (2024) still call flawed: this threshold catches the gross mistakes only.
TERMINAL_ALPHA_BAR_MAX = 0.01


def linear_betas(T, beta_start=1e-4, beta_end=0.02, *, scale_to_T=False):
    """Linearly spaced betas from ``beta_start`` to ``beta_end`` (Ho et al., 2020, Sec. 4).

    DDPM uses T = 1000, beta_1 = 1e-4, beta_T = 0.02. By default the range is *not* rescaled with T,
    as in ``diffusers``: with a small T the last step is far from pure noise (lesson 02 shows this;
    T = 200 ends at alpha_bar = 0.13).

    ``scale_to_T=True`` multiplies both ends by 1000 / T, as Nichol & Dhariwal's code does
    (improved-diffusion, ``gaussian_diffusion.get_named_beta_schedule("linear", T)``), so that any T
    destroys the signal about as completely as DDPM's 1000 steps. The scaled beta_end must stay below
    1, so with the default range this needs T > 20.
    """
    _check_T(T)
    if scale_to_T:
        scale = 1000 / T
        if not beta_end * scale < 1.0:
            raise ValueError(
                f"scale_to_T=True turns beta_end into {beta_end} * 1000/{T} = {beta_end * scale:.3g}, but betas must "
                f"be below 1: use T > {math.floor(1000 * beta_end)} for this range, or scale_to_T=False")
        beta_start, beta_end = beta_start * scale, beta_end * scale
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
    if len(betas) < 2:
        raise ValueError(
            f"zero-terminal-SNR rescaling needs T >= 2, got T = {len(betas)}: it keeps alpha_bar_0 and sets "
            "alpha_bar_(T-1) to 0, which are the same step when T = 1 (the rescaling would divide 0 by 0)")
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

    @cached_property
    def alpha_bars64(self):
        """alpha_bar_t = prod_{s<=t} alpha_s (Ho et al., 2020, eq. 4), accumulated and kept in float64.
        Computed once per schedule (a schedule never changes): every sampler step and conversion reads it."""
        return torch.cumprod(1.0 - self.betas.double(), dim=0)

    @property
    def alpha_bars(self):
        return self.alpha_bars64.float()

    @property
    def snr(self):
        """Signal-to-noise ratio SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al., 2021, eq. 2).

        Computed from the float64 alpha_bar: near t = 0, 1 - alpha_bar is ~1e-4, and rounding alpha_bar
        to float32 first would cost ~1e-4 relative error in the SNR.
        """
        ab = self.alpha_bars64
        return (ab / (1 - ab)).float()

    @property
    def log_snr(self):
        """log SNR(t) = log alpha_bar_t - log(1 - alpha_bar_t), in float64 then rounded; -inf at a
        zero-terminal-SNR step."""
        ab = self.alpha_bars64
        return (torch.log(ab) - torch.log1p(-ab)).float()

    def __repr__(self):
        return f"Schedule({self.name!r}, T={self.T})"


def make_schedule(name, T=1000, *, zero_terminal_snr=False, **kwargs):
    """Build a :class:`Schedule` by name: ``"linear"`` or ``"cosine"``.

    ``kwargs`` go to :func:`linear_betas` (``beta_start``, ``beta_end``, ``scale_to_T``) or
    :func:`cosine_betas` (``s``, ``max_beta``). ``zero_terminal_snr=True`` applies
    :func:`rescale_zero_terminal_snr` (needs T >= 2).

    Building a schedule that never reaches noise (e.g. linear with T = 200) is allowed without a
    warning, since lesson 02 builds such schedules to show the flaw; :func:`check_reaches_noise`
    warns where one is used for training (``train.diffusion_loss``).
    """
    if name == "cosine" and "scale_to_T" in kwargs:
        raise ValueError("scale_to_T is an option of the linear schedule only: the cosine schedule is defined "
                         "over t/T and already reaches noise at any T")
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


def check_reaches_noise(schedule, max_alpha_bar=TERMINAL_ALPHA_BAR_MAX):
    """Warn (``UserWarning``) if the last step keeps more than ``max_alpha_bar`` of the signal power.

    A model trained on such a schedule never sees pure noise, yet sampling starts from N(0, I)
    (Lin et al., 2024, Sec. 3). Returns True when the schedule reaches noise, False after warning.
    """
    terminal = schedule.alpha_bars64[-1].item()
    if terminal <= max_alpha_bar:
        return True
    hint = ("make_schedule('linear', T, scale_to_T=True) (Nichol & Dhariwal's 1000/T rescaling of the betas), "
            "the cosine schedule, zero_terminal_snr=True, or a larger T")
    warnings.warn(
        f"schedule {schedule.name!r} with T = {schedule.T} ends at alpha_bar_(T-1) = {terminal:.3g} > {max_alpha_bar}: "
        f"the last step keeps {math.sqrt(terminal):.0%} of the image's amplitude, so training never reaches the pure "
        f"noise that sampling starts from. Use {hint}.", UserWarning, stacklevel=3)
    return False


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
    # index where t lives, then move: a Python int t is looked up on the CPU and copied over, with no
    # device-to-host synchronisation (indexing a GPU tensor with a 0-d tensor would read it back first)
    out = values.to(t.device)[t].to(x.device, x.dtype)
    if out.ndim == 0:
        return out
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"got {out.shape[0]} timesteps for a batch of {x.shape[0]}")
    return out.reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1) for images
