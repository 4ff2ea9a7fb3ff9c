"""Attention for text conditioning (lesson 08): scaled dot-product attention two ways, multi-head
cross-attention from image positions to text tokens, and the SpatialTransformer block of Rombach et al.
(2022, latent diffusion) that puts it inside a U-Net.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V            (Vaswani et al., 2017, eq. 1)

with the queries Q from the image (one per pixel of the feature map) and the keys K and values V from
the tokens of the prompt: each pixel asks "which words are about me?" and takes a weighted mix of
their values.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F


def attention_weights(q, k, key_mask=None):
    """softmax(Q K^T / sqrt(d)) written out: q (..., N, d), k (..., L, d) -> weights (..., N, L).

    ``key_mask`` (..., L) bool, True = a real token: padding gets weight 0 (its score set to -inf
    before the softmax), so each row still sums to 1 over the real tokens.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., N, L)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[..., None, :], float("-inf"))
    return scores.softmax(dim=-1)


def attention(q, k, v, key_mask=None, return_weights=False):
    """Scaled dot-product attention: q (..., N, d), k and v (..., L, d) -> (..., N, d).

    The fast path is torch's fused ``F.scaled_dot_product_attention``; it never forms the (N, L)
    weights. With ``return_weights=True`` the explicit softmax path runs instead and returns
    (output, weights) so that they can be drawn; a test checks that the two paths agree.
    """
    if return_weights:
        w = attention_weights(q, k, key_mask)  # (..., N, L)
        return w @ v, w
    mask = None if key_mask is None else key_mask[..., None, :]  # (..., 1, L): broadcast over queries
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from ``x`` (B, N, dim), keys and values from ``context``
    (B, L, context_dim). Each of the ``heads`` heads works in dim / heads dimensions."""

    def __init__(self, dim, context_dim, heads=4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _split(self, x):
        B, L, D = x.shape
        return x.view(B, L, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, L, D/heads)

    def forward(self, x, context, key_mask=None, return_weights=False):
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        mask = None if key_mask is None else key_mask[:, None, :]  # (B, 1, L): the same for every head
        out = attention(q, k, v, mask, return_weights)
        out, w = out if return_weights else (out, None)  # out (B, heads, N, D/heads), w (B, heads, N, L)
        B, H, N, d = out.shape
        out = self.to_out(out.transpose(1, 2).reshape(B, N, H * d))  # (B, N, dim): heads concatenated
        return (out, w) if return_weights else out


class SpatialTransformer(nn.Module):
    """The text-conditioning block of latent diffusion (Rombach et al., 2022, Sec. 3.3; their
    ``SpatialTransformer``): GroupNorm, a 1x1 projection in, then on the H*W positions as a sequence
    self-attention is left out (at 8x8 and 4x4 the convolutions already see the whole latent) and
    cross-attention to the tokens and a feed-forward layer follow, each pre-norm and residual; a
    zero-initialised 1x1 projection out and a residual around the whole block. Zero init makes the
    block the identity at the start of training, so adding it never disturbs the U-Net.
    """

    def __init__(self, channels, context_dim, heads=4, groups=8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.norm_attn = nn.LayerNorm(channels)
        self.attn = CrossAttention(channels, context_dim, heads)
        self.norm_ff = nn.LayerNorm(channels)
        self.ff = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x, context, key_mask=None, attention_maps=None):
        """x (B, C, H, W), context (B, L, context_dim), key_mask (B, L) bool. If ``attention_maps`` is a
        list, the weights (B, heads, H*W, L) are appended to it (the explicit softmax path runs)."""
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, H*W, C): pixels as a sequence
        if attention_maps is None:
            h = h + self.attn(self.norm_attn(h), context, key_mask)
        else:
            a, w = self.attn(self.norm_attn(h), context, key_mask, return_weights=True)
            attention_maps.append(w)  # (B, heads, H*W, L)
            h = h + a
        h = h + self.ff(self.norm_ff(h))
        h = h.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj_out(h)
