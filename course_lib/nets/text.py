"""A small text encoder, trained from scratch jointly with the latent U-Net (lesson 08), as Rombach et
al. (2022, Sec. 4.3.1) train their transformer for text-to-image on LAION: token ids in, one vector per
token out, which the U-Net's cross-attention reads as keys and values.

The vocabulary and the tokeniser live in :mod:`course_lib.latent`; this network sees only integer ids.
"""

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Token embedding + learned position embedding, ``layers`` pre-norm transformer encoder layers
    (self-attention among the prompt's words, so that "thick" can know which digit it describes), a final
    LayerNorm. ``forward(tokens, key_mask)``: tokens (B, L) integer ids, key_mask (B, L) bool (True = a real
    token, False = padding) -> (B, L, dim)."""

    def __init__(self, vocab_size, max_len=8, dim=64, layers=2, heads=4):
        super().__init__()
        self.vocab_size, self.max_len, self.dim = vocab_size, max_len, dim
        self.token_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens, key_mask):
        B, L = tokens.shape
        if L > self.max_len:
            raise ValueError(f"at most {self.max_len} tokens, got {L}")
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}, got {tokens.min().item()}..{tokens.max().item()}")
        h = self.token_emb(tokens) + self.pos_emb[:L]  # (B, L, dim)
        h = self.layers(h, src_key_padding_mask=~key_mask)  # torch's mask: True = ignore (the opposite of ours)
        return self.norm(h)  # (B, L, dim)
