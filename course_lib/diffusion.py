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
    alpha_bar = at(schedule.alpha_bars, t, x0)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def q_posterior(x0, x_t, t, schedule):
    """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al., 2020, eqs. 6-7).

        mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
               + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        var  = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

    with alpha_bar_{-1} = 1, so at t = 0 the variance is 0 and the mean is x_0.
    Returns ``(mean, variance)``; the variance broadcasts against x_t.
    """
    _same_shape(x0, x_t, "x0", "x_t")
    alpha_bar_prev = torch.cat([torch.ones(1), schedule.alpha_bars[:-1]])
    alpha_bar = at(schedule.alpha_bars, t, x_t)
    alpha_bar_prev = at(alpha_bar_prev, t, x_t)
    alpha = at(schedule.alphas, t, x_t)
    beta = at(schedule.betas, t, x_t)
    mean = (alpha_bar_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    return mean, variance


def predict_x0(x_t, eps, t, schedule):
    """Invert eq. 4 of Ho et al. (2020) for x_0 given the noise:

        x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).
    """
    _same_shape(x_t, eps, "x_t", "eps")
    alpha_bar = at(schedule.alpha_bars, t, x_t)
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0(x_t, x0, t, schedule):
    """The noise that takes x_0 to x_t: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    _same_shape(x_t, x0, "x_t", "x0")
    alpha_bar = at(schedule.alpha_bars, t, x_t)
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


def score_from_eps(eps, t, schedule):
    """Score of the noised marginal from the noise prediction (Song et al., 2021, eq. 11 context;
    Vincent, 2011): grad_x log q_t(x) = -eps / sqrt(1 - alpha_bar_t)."""
    alpha_bar = at(schedule.alpha_bars, t, eps)
    return -eps / (1 - alpha_bar).sqrt()


def eps_from_score(score, t, schedule):
    """The inverse of :func:`score_from_eps`: eps = -sqrt(1 - alpha_bar_t) * score."""
    alpha_bar = at(schedule.alpha_bars, t, score)
    return -(1 - alpha_bar).sqrt() * score


def v_from_eps(x0, eps, t, schedule):
    """The velocity target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
    (Salimans & Ho, 2022, Sec. 4)."""
    _same_shape(x0, eps, "x0", "eps")
    alpha_bar = at(schedule.alpha_bars, t, x0)
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


def eps_from_v(x_t, v, t, schedule):
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v (Salimans & Ho, 2022)."""
    _same_shape(x_t, v, "x_t", "v")
    alpha_bar = at(schedule.alpha_bars, t, x_t)
    return (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * v


def x0_from_v(x_t, v, t, schedule):
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (Salimans & Ho, 2022)."""
    _same_shape(x_t, v, "x_t", "v")
    alpha_bar = at(schedule.alpha_bars, t, x_t)
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v


def _noise_like(x, noise=None, generator=None):
    """Standard normal noise shaped like x: the given ``noise`` (checked) or a fresh draw."""
    if noise is None:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but must match the input's {tuple(x.shape)}")
    return noise


def _same_shape(a, b, name_a, name_b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}; they must match")
