"""MLP epsilon-predictors for 2-D points, trained live in seconds (lessons 03, 05, 07)."""

import torch
from torch import nn

from .common import timestep_embedding


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
