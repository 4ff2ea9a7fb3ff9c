"""Pieces every network shares: the sinusoidal time embedding and the residual block."""

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


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
