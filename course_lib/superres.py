"""Super-resolution by diffusion, conditioned on the low-resolution image (lesson 09; SR3, Saharia et al., 2021).

The degradation (what "low resolution" means here): :func:`downsample` averages each factor x factor
block of pixels (area downsampling, ``F.avg_pool2d``), the image a sensor with bigger pixels would record.
SR3 downsamples with bicubic filtering instead; the box average is used here because it is exact and
simple to invert in one direction: the consistency measure downsample(SR) vs the input checks whether the
super-resolved image explains the observation (SR3, Table 1).

The network (shipped as ``mnist-sr``) is the course's U-Net with two input channels: the noisy image
x_t and the low-resolution image upsampled back to 32x32 by bicubic interpolation, concatenated along
channels (SR3, Sec. 2.4); it predicts the noise eps of x_t. During training the condition is replaced
by zeros (an image that never occurs: digits have a -1 background) for 10% of the samples, so the same
network also learns the unconditional model and classifier-free guidance works on the condition:

    eps_guided = eps(x_t, 0) + w (eps(x_t, up(x_lr)) - eps(x_t, 0)),    w = 1: plain conditional.

The network is trained on factors 2, 4 and 8 (half the samples at 4), so one model serves all three.
"""

import torch
import torch.nn.functional as F

from .guidance import _finite
from .samplers import ddim_sample

FACTORS = (2, 4, 8)
DEFAULT_W = 1.0  # the lesson's default guidance on the low-res image (plain conditional): see lesson 09


def downsample(x, factor):
    """Average each ``factor`` x ``factor`` block: (B, C, H, W) -> (B, C, H / factor, W / factor)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if x.ndim != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"downsample needs (B, C, H, W) images with H and W divisible by {factor}, "
                         f"got shape {tuple(x.shape)}")
    return F.avg_pool2d(x, factor)


def upsample(x_lr, size=32):
    """Bicubic interpolation back to ``size`` x ``size``: the baseline, and the network's condition channel."""
    if x_lr.ndim != 4 or x_lr.shape[-1] != x_lr.shape[-2] or size % x_lr.shape[-1]:
        raise ValueError(f"upsample needs square (B, C, h, h) images with h dividing {size}, got {tuple(x_lr.shape)}")
    return F.interpolate(x_lr, size=(size, size), mode="bicubic", align_corners=False)


def condition(x_lr, size=32):
    """The condition channel for a low-res image (B, 1, h, h): its bicubic upsampling to (B, 1, size, size)."""
    factor = size // x_lr.shape[-1] if x_lr.ndim == 4 else None
    if factor not in FACTORS or x_lr.shape[1] != 1:
        raise ValueError(f"x_lr must be (B, 1, h, h) with h = {size} / factor for a factor in {FACTORS} "
                         f"(h in {[size // f for f in FACTORS]}), got shape {tuple(x_lr.shape)}")
    return upsample(x_lr, size)


def sr_loss(schedule, factors=FACTORS, factor_probs=(0.25, 0.5, 0.25), cond_dropout=0.1):
    """The DDPM loss (Ho et al., 2020, eq. 14) with the condition: || eps - eps_theta([x_t, up(down(x_0))], t) ||^2,
    the factor drawn per sample from ``factors`` with ``factor_probs``, the condition zeroed with
    probability ``cond_dropout`` (for classifier-free guidance). Returns ``loss_fn(model, batch, generator)``."""
    from .diffusion import q_sample
    from .train import _draw

    if len(factors) != len(factor_probs) or abs(sum(factor_probs) - 1) > 1e-6:
        raise ValueError(f"factor_probs must give one probability per factor in {factors}, summing to 1; got {factor_probs}")
    bounds = torch.tensor(factor_probs, dtype=torch.float).cumsum(0)[:-1]  # (F - 1,) upper bounds of the bins

    def loss_fn(model, batch, generator):
        x0 = batch[0]
        B, dev = x0.shape[0], x0.device
        u = _draw(torch.rand, (B,), generator=generator, device=dev)
        which = (u[:, None] >= bounds.to(dev)[None]).sum(1)  # (B,) index of each sample's factor
        conds = torch.stack([upsample(downsample(x0, f), x0.shape[-1]) for f in factors])  # (F, B, 1, H, W)
        cond = conds[which, torch.arange(B, device=dev)]  # (B, 1, H, W): each sample's own factor
        drop = _draw(torch.rand, (B, 1, 1, 1), generator=generator, device=dev) < cond_dropout
        cond = torch.where(drop, torch.zeros_like(cond), cond)
        t = _draw(torch.randint, 0, schedule.T, (B,), generator=generator, device=dev)
        eps = _draw(torch.randn, x0.shape, generator=generator, device=dev)
        x_t = q_sample(x0, t, schedule, noise=eps)
        return F.mse_loss(model(torch.cat([x_t, cond], dim=1), t).float(), eps)  # input (B, 2, H, W)

    return loss_fn


def guided_model(net, cond, w):
    """The model callable ``(x_t, t) -> eps`` for sampling, guided by the condition image ``cond``
    (B, 1, H, W): w = 1 the plain conditional model (one pass), w = 0 the unconditional one, otherwise
    both passes in one batch and eps_u + w (eps_c - eps_u)."""
    w = _finite("w", w)

    def model(x_t, t):
        if w == 1.0:
            return net(torch.cat([x_t, cond], dim=1), t)
        if w == 0.0:
            return net(torch.cat([x_t, torch.zeros_like(cond)], dim=1), t)
        both = torch.cat([torch.cat([x_t, cond], 1), torch.cat([x_t, torch.zeros_like(cond)], 1)])  # (2B, 2, H, W)
        eps_c, eps_u = net(both, torch.cat([t, t])).chunk(2)
        return eps_u + w * (eps_c - eps_u)

    return model


def upscale(pipe, x_lr, steps=50, w=DEFAULT_W, generator=None, eta=0.0, x_T=None):
    """Super-resolve low-res digits x_lr (B, 1, h, h) in [-1, 1], h = 32 / factor, with the shipped
    ``mnist-sr`` (``pipe = pretrained.load("mnist-sr")``): DDIM with ``steps`` steps and ``eta``, guidance
    ``w`` on the low-res image, from the starting noise ``x_T`` (B, 1, 32, 32) if given (else drawn with
    ``generator``). Returns (B, 1, 32, 32) in [-1, 1], on x_lr's device."""
    cond = condition(x_lr)
    model = guided_model(pipe.model, cond, w)
    return ddim_sample(model, cond.shape, pipe.schedule, steps=steps, eta=eta, generator=generator, clip_x0=True,
                       device=x_lr.device, x_T=x_T)


def consistency_mse(x_sr, x_lr):
    """Mean squared error between downsample(x_sr) and the low-res input (SR3, Table 1): does the
    super-resolved image explain what was observed? Images in [-1, 1]."""
    factor = x_sr.shape[-1] // x_lr.shape[-1]
    return (downsample(x_sr, factor) - x_lr).square().mean().item()
