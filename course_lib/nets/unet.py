"""The U-Net epsilon-predictor for 32x32 images (Ho et al., 2020, Appendix B, shrunk)."""

import torch
from torch import nn
import torch.nn.functional as F

from .attention import SpatialTransformer
from .common import ResBlock, timestep_embedding


class UNet(nn.Module):
    """A small U-Net that predicts the noise eps in x_t.

    ``channels`` gives the width at each resolution (32x32, 16x16, 8x8 by default); each level has
    ``blocks`` residual blocks on the way down and ``blocks + 1`` on the way up, each of the latter
    fed a skip connection from the way down. With ``num_classes`` set, ``forward(x, t, y)`` also takes
    labels, and the extra label ``null_class = num_classes`` means "unconditional" (classifier-free
    guidance); ``y=None`` uses it. The default (about 0.9 M parameters) is the shipped ``mnist-unet``:
    narrow at 32x32, where convolutions are expensive, wider at 8x8, where they are cheap.

    With ``context_dim`` set (the latent U-Net of lesson 08), a :class:`SpatialTransformer` follows every
    residual block and sits between the two middle ones: ``forward(x, t, context=..., key_mask=...)``
    then attends from every pixel to the prompt's token vectors (B, L, context_dim).
    """

    def __init__(self, in_channels=1, channels=(16, 32, 64), blocks=2, num_classes=None, dropout=0.0, out_channels=None,
                 context_dim=None, heads=4):
        super().__init__()
        self.in_channels, self.channels, self.blocks = in_channels, tuple(channels), blocks
        # out_channels differs from in_channels when extra input channels carry a condition
        # (super-resolution, lesson 09: [x_t, upsampled low-res image] in, eps of x_t out)
        self.out_channels = in_channels if out_channels is None else out_channels
        self.num_classes = num_classes
        self.null_class = num_classes  # the extra label used for "no label"
        emb_dim = 4 * channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.context_dim = context_dim

        def attn(c):  # cross-attention after a residual block, or nothing (Identity has no weights)
            return SpatialTransformer(c, context_dim, heads) if context_dim is not None else nn.Identity()

        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skip_channels, c = [channels[0]], channels[0]
        for level, c_out in enumerate(channels):
            for _ in range(blocks):
                self.down.append(ResBlock(c, c_out, emb_dim, dropout))
                c = c_out
                self.down_attn.append(attn(c))
                skip_channels.append(c)
            if level < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_channels.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), ResBlock(c, c, emb_dim, dropout)])
        self.mid_attn = attn(c)
        self.up, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level, c_out in reversed(list(enumerate(channels))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(c + skip_channels.pop(), c_out, emb_dim, dropout))
                c = c_out
                self.up_attn.append(attn(c))
            if level > 0:
                self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                   nn.Conv2d(c, c, 3, padding=1)))
        self.norm_out = nn.GroupNorm(8, c)
        self.conv_out = nn.Conv2d(c, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start by predicting eps = 0: a calm first step
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, y=None, context=None, key_mask=None, attention_maps=None):
        """x: (B, C, H, W) noisy images, t: (B,) or scalar integer timesteps, y: (B,) labels or None.
        With cross-attention: context (B, L, context_dim) token vectors, key_mask (B, L) bool (True = a real
        token), and ``attention_maps`` a list to which every block appends its weights (B, heads, H*W, L)."""
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
        if (context is None) != (self.context_dim is None):
            raise ValueError("this UNet takes a context (B, L, context_dim) of token vectors" if context is None
                             else "this UNet was built without context_dim, so it takes no context")
        if context is not None and (context.ndim != 3 or context.shape[0] != B or context.shape[2] != self.context_dim):
            raise ValueError(f"context must be (B={B}, L, {self.context_dim}), got {tuple(context.shape)}")

        def attend(block, h):
            return h if self.context_dim is None else block(h, context, key_mask, attention_maps)

        h = self.conv_in(x)
        skips = [h]
        blocks, attns = iter(self.down), iter(self.down_attn)
        for level in range(len(self.channels)):
            for _ in range(self.blocks):
                h = attend(next(attns), next(blocks)(h, emb))
                skips.append(h)
            if level < len(self.channels) - 1:
                h = self.downsample[level](h)  # (B, C, H/2, W/2)
                skips.append(h)
        h = self.mid[1](attend(self.mid_attn, self.mid[0](h, emb)), emb)
        blocks, attns = iter(self.up), iter(self.up_attn)
        for i, level in enumerate(reversed(range(len(self.channels)))):
            for _ in range(self.blocks + 1):
                h = next(blocks)(torch.cat([h, skips.pop()], dim=1), emb)  # (B, C + C_skip, H, W)
                h = attend(next(attns), h)
            if level > 0:
                h = self.upsample[i](h)  # (B, C, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))
