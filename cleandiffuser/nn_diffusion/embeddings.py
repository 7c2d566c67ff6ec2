"""Noise-level embeddings.

Every generative model feeds its backbone one float per sample, the *noise coordinate*, of order
one: VP diffusion and rectified flow use the time t in [0, 1]; EDM, consistency models and CTM use
c_noise = ln(sigma) / 4 (about -1.6 .. 1.1). Positional embeddings see 1000 * c (DDPM's step
scale: frequencies from 1 to 1 / max_positions); Fourier embeddings see c itself with frequencies
~ N(0, scale^2): the default scale 16 gives high-frequency features, and scale 0.02 (as improved
consistency training recommends) gives smooth, nearly linear ones, which consistency training
needs. Inputs stay float, so distinct steps never collapse.
"""
import math

import torch
import torch.nn as nn

from ..utils.activations import Mish


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(w x), sin(w x)] with w = max_positions^(-k/half)."""

    def __init__(self, dim: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        if dim % 2:
            raise ValueError(f"positional embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.arange(half, dtype=torch.float32) / (half - (1 if endpoint else 0) or 1)
        self.register_buffer("freqs", (1.0 / max_positions) ** freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (1000.0 * x.float())[:, None] * self.freqs[None]
        return torch.cat([x.cos(), x.sin()], dim=-1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi f x), sin(2 pi f x)], f ~ N(0, scale^2), fixed."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"fourier embedding dim must be even, got {dim}")
        g = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale * 2 * math.pi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()[:, None] * self.freqs[None]
        return torch.cat([x.cos(), x.sin()], dim=-1)


def _mlp(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim * 4), Mish(), nn.Linear(dim * 4, dim))


EMBEDDING_TYPES = ("positional", "fourier", "untrainable_positional", "untrainable_fourier")


def make_embedding(kind: str, dim: int, params: dict | None = None) -> nn.Module:
    """`positional`/`fourier` add a trainable 2-layer Mish MLP; `untrainable_*` are the raw features."""
    params = dict(params or {})
    if kind not in EMBEDDING_TYPES:
        raise ValueError(f"timestep_emb_type={kind!r} is not one of {EMBEDDING_TYPES}")
    base = (PositionalEmbedding if "positional" in kind else FourierEmbedding)(dim, **params)
    return base if kind.startswith("untrainable") else nn.Sequential(base, _mlp(dim))


class NoiseEmbedding(nn.Module):
    """Embeds a noise coordinate of shape (B,). A consistency trajectory model also passes the
    target time: noise of shape (B, 2) gives emb(t) + P emb(s), where P is a zero-initialized
    projection added by `enable_target_time()` so a network warm-started from a teacher starts
    out equal to it."""

    def __init__(self, kind: str, dim: int, params: dict | None = None):
        super().__init__()
        self.kind, self.dim, self.params = kind, dim, dict(params or {})
        self.embed = make_embedding(kind, dim, params)
        self.target_proj: nn.Module | None = None

    def enable_target_time(self) -> None:
        if self.target_proj is None:
            device = next(iter(self.embed.buffers())).device
            self.target_proj = nn.Linear(self.dim, self.dim, device=device)
            nn.init.zeros_(self.target_proj.weight)
            nn.init.zeros_(self.target_proj.bias)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        if noise.dim() == 1:
            return self.embed(noise)
        if noise.dim() == 2 and noise.shape[1] == 2:
            if self.target_proj is None:
                raise ValueError("noise of shape (B, 2) needs enable_target_time() on the backbone")
            both = self.embed(noise.T.reshape(-1)).view(2, noise.shape[0], -1)
            return both[0] + self.target_proj(both[1])
        raise ValueError(f"noise must have shape (B,) or (B, 2), got {tuple(noise.shape)}")
