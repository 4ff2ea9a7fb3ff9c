"""The forward process, its posterior, and the conversions between what a network can predict.

All functions take the :class:`~course_lib.schedules.Schedule` explicitly and an integer ``t``
(an int, or a (B,) tensor with one timestep per image). Shapes: ``x0``, ``x_t``, ``eps`` are
(B, C, H, W) images or (B, D) points; any shape with the batch first works.
"""

import torch

from .schedules import at


def q_sample(x0, t, schedule, noise=None, generator=None):
    """Sample x_t ~ q(x_t | x_0) in one shot (Ho et al., 2020, eq. 4):

        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I).

    Pass ``noise`` to choose eps yourself (it must have x0's shape), or a ``generator``.
    """
    noise = _noise_like(x0, noise, generator)
    ab, one_minus_ab = _alpha_bars64(schedule)
    return at(ab.sqrt(), t, x0) * x0 + at(one_minus_ab.sqrt(), t, x0) * noise


def q_posterior(x0, x_t, t, schedule):
    """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al., 2020, eqs. 6-7).

        mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
               + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        var  = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

    with alpha_bar_{-1} = 1, so at t = 0 the variance is 0 and the mean is x_0.
    Returns ``(mean, variance)``; the variance broadcasts against x_t.
    """
    _same_shape(x0, x_t, "x0", "x_t")
    # coefficients in float64: 1 - alpha_bar cancels in float32 near t = 0
    ab, one_minus_ab = _alpha_bars64(schedule)
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    one_minus_ab_prev = torch.cat([ab.new_zeros(1), one_minus_ab[:-1]])
    beta = schedule.betas.double()
    coef_x0 = ab_prev.sqrt() * beta / one_minus_ab
    coef_xt = (1 - beta).sqrt() * one_minus_ab_prev / one_minus_ab
    variance = one_minus_ab_prev / one_minus_ab * beta
    mean = at(coef_x0, t, x_t) * x0 + at(coef_xt, t, x_t) * x_t
    return mean, at(variance, t, x_t)


def predict_x0(x_t, eps, t, schedule):
    """Invert eq. 4 of Ho et al. (2020) for x_0 given the noise:

        x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).
    """
    _same_shape(x_t, eps, "x_t", "eps")
    ab, one_minus_ab = _alpha_bars64(schedule)
    _check_recoverable(ab, t, "predict_x0")
    return (x_t - at(one_minus_ab.sqrt(), t, x_t) * eps) / at(ab.sqrt(), t, x_t)


def eps_from_x0(x_t, x0, t, schedule):
    """The noise that takes x_0 to x_t: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    _same_shape(x_t, x0, "x_t", "x0")
    ab, one_minus_ab = _alpha_bars64(schedule)
    return (x_t - at(ab.sqrt(), t, x_t) * x0) / at(one_minus_ab.sqrt(), t, x_t)


def score_from_eps(eps, t, schedule):
    """Score of the noised marginal from the noise prediction (Song et al., 2021, eq. 11 context;
    Vincent, 2011): grad_x log q_t(x) = -eps / sqrt(1 - alpha_bar_t)."""
    return -eps / at(_alpha_bars64(schedule)[1].sqrt(), t, eps)


def eps_from_score(score, t, schedule):
    """The inverse of :func:`score_from_eps`: eps = -sqrt(1 - alpha_bar_t) * score."""
    return -at(_alpha_bars64(schedule)[1].sqrt(), t, score) * score


def v_from_eps(x0, eps, t, schedule):
    """The velocity target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
    (Salimans & Ho, 2022, Sec. 4)."""
    _same_shape(x0, eps, "x0", "eps")
    ab, one_minus_ab = _alpha_bars64(schedule)
    return at(ab.sqrt(), t, x0) * eps - at(one_minus_ab.sqrt(), t, x0) * x0


def eps_from_v(x_t, v, t, schedule):
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v (Salimans & Ho, 2022)."""
    _same_shape(x_t, v, "x_t", "v")
    ab, one_minus_ab = _alpha_bars64(schedule)
    return at(one_minus_ab.sqrt(), t, x_t) * x_t + at(ab.sqrt(), t, x_t) * v


def x0_from_v(x_t, v, t, schedule):
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (Salimans & Ho, 2022)."""
    _same_shape(x_t, v, "x_t", "v")
    ab, one_minus_ab = _alpha_bars64(schedule)
    return at(ab.sqrt(), t, x_t) * x_t - at(one_minus_ab.sqrt(), t, x_t) * v


def _check_recoverable(ab, t, fn):
    """Refuse to divide by sqrt(alpha_bar_t) = 0: at a zero-terminal-SNR step x_t is pure noise and
    eps carries no information about x_0 (Lin et al., 2024, Sec. 3.2)."""
    if ab[-1] > 0:  # the usual case: no step has alpha_bar = 0 (checked on the CPU schedule, no device sync)
        return
    t_max = int(t) if not isinstance(t, torch.Tensor) or t.ndim == 0 else int(t.max())
    if t_max == len(ab) - 1:
        raise ValueError(
            f"{fn}: alpha_bar_t = 0 at t = {t_max} (a zero-terminal-SNR schedule), so x_0 cannot be recovered "
            "from an eps prediction (it would divide by sqrt(alpha_bar_t) = 0). Use a v-predicting model "
            f"(x0_from_v) as Lin et al. (2024) do, or start sampling at t = {t_max - 1} (e.g. 'leading' spacing).")


def _alpha_bars64(schedule):
    """alpha_bar and 1 - alpha_bar in float64, so that 1 - alpha_bar keeps its digits near t = 0."""
    ab = schedule.alpha_bars64
    return ab, 1 - ab


def _noise_like(x, noise=None, generator=None):
    """Standard normal noise shaped like x: the given ``noise`` (checked) or a fresh draw.

    The draw happens on the generator's own device and is then moved to x's: a CPU generator then
    gives the same numbers whether the model runs on the CPU or a GPU (torch refuses to draw CUDA
    tensors with a CPU generator)."""
    if noise is None:
        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    if noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but must match the input's {tuple(x.shape)}")
    return noise.to(x.device)


def _same_shape(a, b, name_a, name_b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}; they must match")
