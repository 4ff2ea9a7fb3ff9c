"""The autoencoder of latent diffusion (lesson 08): 32x32x1 digits <-> 8x8x4 latents (downsampling
factor f = 4, Rombach et al., 2022, Sec. 3.1), trained with a plain MSE reconstruction loss.

No KL term: Rombach et al. add a tiny one (weight 1e-6) only so that the latent scale cannot drift;
here the scale is fixed afterwards instead, by dividing by the standard deviation of the training
latents ("scale_by_std", :func:`course_lib.latent.latent_scale_factor`), and without a KL term every
bit of the latent is spent on the reconstruction. Their perceptual and adversarial losses are left
out too: on 32x32 digits MSE alone keeps strokes sharp enough (the lesson measures PSNR).
"""

import torch
from torch import nn


class ConvBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus the input (a residual block without a time embedding)."""

    def __init__(self, channels):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                 nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class Autoencoder(nn.Module):
    """``encode(x)``: (B, 1, 32, 32) in [-1, 1] -> (B, latent_channels, 8, 8); ``decode(z)``: back.
    ``forward(x)`` = decode(encode(x)), the reconstruction. The latents are unscaled: multiply by the
    scale factor before diffusion, divide by it before decoding (:mod:`course_lib.latent` does both)."""

    def __init__(self, in_channels=1, latent_channels=4, width=32):
        super().__init__()
        self.in_channels, self.latent_channels, self.width = in_channels, latent_channels, width
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), ConvBlock(w),  # (B, w, 32, 32)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), ConvBlock(2 * w),  # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), ConvBlock(2 * w),  # (B, 2w, 8, 8)
            nn.GroupNorm(8, 2 * w), nn.SiLU(), nn.Conv2d(2 * w, latent_channels, 3, padding=1),  # (B, 4, 8, 8)
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * w, 3, padding=1), ConvBlock(2 * w),  # (B, 2w, 8, 8)
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * w, 2 * w, 3, padding=1), ConvBlock(2 * w),  # 16x16
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * w, w, 3, padding=1), ConvBlock(w),  # 32x32
            nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, in_channels, 3, padding=1),  # (B, 1, 32, 32)
        )

    def encode(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (32, 32):
            raise ValueError(f"encode takes (B, {self.in_channels}, 32, 32) images, got {tuple(x.shape)}")
        return self.encoder(x)

    def decode(self, z):
        if z.ndim != 4 or z.shape[1] != self.latent_channels or z.shape[-2:] != (8, 8):
            raise ValueError(f"decode takes (B, {self.latent_channels}, 8, 8) latents, got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x):
        return self.decode(self.encode(x))

