"""Classifiers: the clean evaluation classifier of :mod:`course_lib.metrics` and the noise-aware one of lesson 06."""

import torch
from torch import nn
import torch.nn.functional as F

from .common import ResBlock, timestep_embedding


class Classifier(nn.Module):
    """A small CNN for 32x32 digits. ``features(x)`` gives the penultimate activations that the
    classifier-FID of :mod:`course_lib.metrics` compares (the role Inception plays in FID)."""

    def __init__(self, in_channels=1, num_classes=10, width=32, feature_dim=128, dropout=0.3):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.GroupNorm(8, 4 * w), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w)
            nn.Linear(4 * w, feature_dim), nn.SiLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x):
        return self.body(x)  # (B, feature_dim)

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))  # (B, num_classes) logits


class NoisyClassifier(nn.Module):
    """A noise-aware classifier p_phi(y | x_t, t) for classifier guidance (Dhariwal & Nichol, 2021, Sec. 4):
    ``forward(x_t, t) -> logits (B, num_classes)``.

    It sees noisy images x_t and their integer timestep t (sinusoidal embedding -> MLP, added inside every
    residual block as in :class:`UNet`). Normalisation is GroupNorm, never BatchNorm: guidance takes
    grad_{x_t} log p(y | x_t) of each sample, which must depend on that sample alone, not on the batch.
    The layout (32x32 -> 16x16 -> 8x8, widths ``channels``) is kept small so that it trains on one CPU
    core in about a quarter of an hour.
    """

    def __init__(self, in_channels=1, num_classes=10, channels=(32, 64, 128), time_dim=32):
        super().__init__()
        self.in_channels, self.num_classes, self.channels = in_channels, num_classes, tuple(channels)
        self.time_dim = time_dim
        emb_dim = 4 * time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        c0, c1, c2 = channels
        self.conv_in = nn.Conv2d(in_channels, c0, 3, padding=1)  # 32x32
        self.down1 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)  # -> 16x16
        self.block1 = ResBlock(c0, c1, emb_dim)
        self.down2 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)  # -> 8x8
        self.block2 = ResBlock(c1, c2, emb_dim)
        self.block3 = ResBlock(c2, c2, emb_dim)
        self.norm_out = nn.GroupNorm(8, c2)
        self.head = nn.Linear(c2, num_classes)

    def forward(self, x, t):
        """x: (B, C, H, W) noisy images x_t, t: (B,) or scalar integer timesteps -> (B, num_classes) logits."""
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device).expand(B)
        emb = self.time_mlp(timestep_embedding(t, self.time_dim))  # (B, emb_dim)
        h = self.down1(F.silu(self.conv_in(x)))  # (B, c0, 16, 16)
        h = self.down2(self.block1(h, emb))  # (B, c1, 8, 8)
        h = self.block3(self.block2(h, emb), emb)  # (B, c2, 8, 8)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))  # (B, c2): global average pool
        return self.head(h)
