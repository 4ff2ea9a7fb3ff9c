"""The networks of the course, each small enough to train on a laptop.

* :class:`UNet`: the epsilon-predictor for 32x32 images (Ho et al., 2020, Appendix B, shrunk):
  a sinusoidal time embedding, residual blocks with GroupNorm, an optional class embedding with a
  null class for classifier-free guidance.
* :class:`MLPDenoiser`: the same idea for 2-D points, trained live in seconds.
* :class:`Classifier`: a small CNN on clean images, the evaluation classifier of
  :mod:`course_lib.metrics`.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F


def timestep_embedding(t, dim, max_period=10_000):
    """Sinusoidal embedding of integer timesteps (Vaswani et al., 2017, Sec. 3.5; used by Ho et al., 2020).

    t: (B,) integers -> (B, dim): [cos(t * f_k), sin(t * f_k)] with f_k = max_period^(-k / (dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, add the embedding, GroupNorm -> SiLU -> dropout -> conv, plus a skip."""

    def __init__(self, c_in, c_out, emb_dim, dropout=0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # (B, C, 1, 1): same shift at every pixel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class UNet(nn.Module):
    """A small U-Net that predicts the noise eps in x_t.

    ``channels`` gives the width at each resolution (32x32, 16x16, 8x8 by default); each level has
    ``blocks`` residual blocks on the way down and ``blocks + 1`` on the way up, each of the latter
    fed a skip connection from the way down. With ``num_classes`` set, ``forward(x, t, y)`` also takes
    labels, and the extra label ``null_class = num_classes`` means "unconditional" (classifier-free
    guidance); ``y=None`` uses it. The default (about 0.9 M parameters) is the shipped ``mnist-unet``:
    narrow at 32x32, where convolutions are expensive, wider at 8x8, where they are cheap.
    """

    def __init__(self, in_channels=1, channels=(16, 32, 64), blocks=2, num_classes=None, dropout=0.0):
        super().__init__()
        self.in_channels, self.channels, self.blocks = in_channels, tuple(channels), blocks
        self.num_classes = num_classes
        self.null_class = num_classes  # the extra label used for "no label"
        emb_dim = 4 * channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skip_channels, c = [channels[0]], channels[0]
        for level, c_out in enumerate(channels):
            for _ in range(blocks):
                self.down.append(ResBlock(c, c_out, emb_dim, dropout))
                c = c_out
                skip_channels.append(c)
            if level < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_channels.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), ResBlock(c, c, emb_dim, dropout)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, c_out in reversed(list(enumerate(channels))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(c + skip_channels.pop(), c_out, emb_dim, dropout))
                c = c_out
            if level > 0:
                self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                   nn.Conv2d(c, c, 3, padding=1)))
        self.norm_out = nn.GroupNorm(8, c)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start by predicting eps = 0: a calm first step
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, y=None):
        """x: (B, C, H, W) noisy images, t: (B,) or scalar integer timesteps, y: (B,) labels or None."""
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device).expand(B)
        emb = self.time_mlp(timestep_embedding(t, self.channels[0]))  # (B, emb_dim)
        if self.class_emb is not None:
            if y is None:
                y = torch.full((B,), self.null_class, device=x.device, dtype=torch.long)
            y = torch.as_tensor(y, device=x.device).expand(B)
            if y.min() < 0 or y.max() > self.null_class:
                raise ValueError(f"labels must be in 0..{self.num_classes} ({self.null_class} = no label), got {y.tolist()}")
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("this UNet was built without num_classes, so it takes no labels")

        h = self.conv_in(x)
        skips = [h]
        blocks = iter(self.down)
        for level in range(len(self.channels)):
            for _ in range(self.blocks):
                h = next(blocks)(h, emb)
                skips.append(h)
            if level < len(self.channels) - 1:
                h = self.downsample[level](h)  # (B, C, H/2, W/2)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        blocks = iter(self.up)
        for i, level in enumerate(reversed(range(len(self.channels)))):
            for _ in range(self.blocks + 1):
                h = next(blocks)(torch.cat([h, skips.pop()], dim=1), emb)  # (B, C + C_skip, H, W)
            if level > 0:
                h = self.upsample[i](h)  # (B, C, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))


class MLPDenoiser(nn.Module):
    """An MLP epsilon-predictor for 2-D points: (x_t, t) -> eps, with the time embedding concatenated."""

    def __init__(self, dim=2, hidden=128, layers=3, time_dim=32):
        super().__init__()
        self.time_dim = time_dim
        widths = [dim + time_dim] + [hidden] * layers
        mlp = []
        for a, b in zip(widths[:-1], widths[1:]):
            mlp += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*mlp, nn.Linear(hidden, dim))

    def forward(self, x, t):
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        return self.net(torch.cat([x, timestep_embedding(t, self.time_dim)], dim=-1))  # (B, dim)


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


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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


class ConditionalMLPDenoiser(nn.Module):
    """:class:`MLPDenoiser` with a class label: ``forward(x, t, y)`` -> eps for 2-D points, the label
    embedded and concatenated with x_t and the time embedding. The extra label ``null_class = num_classes``
    means "no label" (classifier-free guidance, lesson 07); ``y=None`` uses it."""

    def __init__(self, num_classes, dim=2, hidden=128, layers=3, time_dim=32, class_dim=16):
        super().__init__()
        self.num_classes, self.null_class, self.time_dim = num_classes, num_classes, time_dim
        self.class_emb = nn.Embedding(num_classes + 1, class_dim)
        widths = [dim + time_dim + class_dim] + [hidden] * layers
        mlp = []
        for a, b in zip(widths[:-1], widths[1:]):
            mlp += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*mlp, nn.Linear(hidden, dim))

    def forward(self, x, t, y=None):
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device).expand(B)
        y = torch.full((B,), self.null_class, device=x.device) if y is None else torch.as_tensor(y, device=x.device).expand(B)
        if (y < 0).any() or (y > self.null_class).any():
            raise ValueError(f"labels must be in 0..{self.null_class} ({self.null_class} = no label), got {y.unique().tolist()}")
        h = torch.cat([x, timestep_embedding(t, self.time_dim), self.class_emb(y.long())], dim=-1)  # (B, dim + time + class)
        return self.net(h)  # (B, dim)
