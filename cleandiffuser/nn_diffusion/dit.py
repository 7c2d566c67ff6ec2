import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import BaseNNDiffusion


def sinusoidal_positions(n: int, dim: int, device=None) -> torch.Tensor:
    """(n, dim) sinusoidal encoding of positions 0..n-1 (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device) / half)
    ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], -1)


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return h * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Self-attention + MLP, each with adaLN-Zero (shift, scale, gate) from the conditioning
    vector c: (B, emb_dim). h: (B, L, d_model)."""

    def __init__(self, d_model: int, n_heads: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(approximate="tanh"),
                                 nn.Dropout(dropout), nn.Linear(4 * d_model, d_model))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 6 * d_model))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def attn(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(a.transpose(1, 2).reshape(b, n, d))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, -1)
        h = h + g1[:, None] * self.attn(_modulate(self.norm1(h), sh1, sc1))
        return h + g2[:, None] * self.mlp(_modulate(self.norm2(h), sh2, sc2))


class DiT1d(BaseNNDiffusion):
    """Diffusion Transformer (adaLN-Zero) over a sequence.

    x: (B, horizon, in_dim), noise: (B,) (or (B, 2) after enable_target_time()),
    condition: (B, emb_dim) or None -> (B, horizon, in_dim).
    The conditioning vector is map_noise(noise) + condition, so the condition must already be
    emb_dim wide. All adaLN projections and the output Linear are zero-initialized, so a fresh
    network outputs exactly zero (their gradients exist, some are zero at the first step).
    """

    def __init__(self, in_dim: int, emb_dim: int, d_model: int = 384, n_heads: int = 6,
                 depth: int = 12, dropout: float = 0.0, timestep_emb_type: str = "positional",
                 timestep_emb_params: dict | None = None):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        if d_model % n_heads or d_model % 2:
            raise ValueError(f"d_model={d_model} must be even and divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.x_proj = nn.Linear(in_dim, d_model)
        self.blocks = nn.ModuleList(DiTBlock(d_model, n_heads, emb_dim, dropout) for _ in range(depth))
        self.final_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * d_model))
        self.final = nn.Linear(d_model, in_dim)
        for layer in (self.final_ada[1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        c = self.map_noise(noise)
        if condition is not None:
            c = c + condition
        h = self.x_proj(x) + sinusoidal_positions(x.shape[1], self.d_model, x.device).to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, -1)
        return self.final(_modulate(self.final_norm(h), shift, scale))
