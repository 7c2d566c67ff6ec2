import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.activations import Mish, dropout, mish
from .base import BaseNNDiffusion


class _LNResBlock(nn.Module):
    """h + Linear(Mish(Linear_4h(LayerNorm(Dropout(h))))); h: (B, hidden)."""

    def __init__(self, hidden_dim: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, hidden_dim * 4)
        self.fc2 = nn.Linear(hidden_dim * 4, hidden_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = dropout(h, self.dropout, self.training)
        return h + self.fc2(mish(self.fc1(self.norm(y))))


def default_time_mlp(timestep_emb_type: str, timestep_emb_params: dict | None = None) -> bool:
    """Whether IDQLMlp(time_mlp=None) puts a time MLP after its embedding: for untrainable embeddings of
    high-frequency features (positional; Fourier at scale >= 1), not for smooth Fourier features (scale < 1)
    nor for trainable embeddings (which end in an MLP of their own)."""
    if not timestep_emb_type.startswith("untrainable"):
        return False
    if timestep_emb_type == "untrainable_fourier":
        return float((timestep_emb_params or {}).get("scale", 16.0)) >= 1.0
    return True


class IDQLMlp(BaseNNDiffusion):
    """IDQL's LN-ResNet denoiser for flat actions.

    x: (B, act_dim), noise: (B,) (or (B, 2) after enable_target_time()),
    condition: (B, obs_dim) or None -> (B, act_dim).
    The input layer sees concat[x, map_noise(noise), condition]; condition=None is exactly the same
    as a zero condition (the condition columns of the input layer are skipped, no zeros are built).
    After an untrainable embedding of high-frequency features (untrainable_positional, untrainable_fourier at
    scale >= 1) a Linear(emb, 2emb)-Mish-Linear(2emb, emb) time MLP follows, as in IDQL: without it a linear map
    of those features cannot form smooth functions of the noise level (EDM Heun-20 bandit precision 0.76 without,
    0.90 with; results/seed-api-bandit.md). Smooth Fourier features (scale < 1, consistency training's 0.02) are
    already nearly linear in the noise level and a fresh MLP only weakens them, so none is added there, nor after
    trainable embeddings (they end in an MLP). `time_mlp=True` / `False` forces it (False: the layout of
    checkpoints saved before this was added).
    out_activation: Mish before the output layer, as IDQL's LN-ResNet (default); False gives the public
    CleanDiffuser IDQLMlp's layout, a linear read-out of the residual stream, which learned the seed-API bandit's
    modes more precisely (EDM Euler-4, paired over seeds; results/seed-api-bandit.md).
    """

    def __init__(self, obs_dim: int, act_dim: int, emb_dim: int = 64, hidden_dim: int = 256,
                 n_blocks: int = 3, dropout: float = 0.1, timestep_emb_type: str = "positional",
                 timestep_emb_params: dict | None = None, time_mlp: bool | None = None,
                 out_activation: bool = True):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        if time_mlp is None:
            time_mlp = default_time_mlp(timestep_emb_type, timestep_emb_params)
        self.time_mlp = (nn.Sequential(nn.Linear(emb_dim, emb_dim * 2), Mish(), nn.Linear(emb_dim * 2, emb_dim))
                         if time_mlp and timestep_emb_type.startswith("untrainable") else nn.Identity())
        self.inp = nn.Linear(act_dim + emb_dim + obs_dim, hidden_dim)
        self.blocks = nn.ModuleList(_LNResBlock(hidden_dim, dropout) for _ in range(n_blocks))
        self.out = nn.Linear(hidden_dim, act_dim)
        self.out_activation = bool(out_activation)

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        t = self.time_mlp(self.map_noise(noise))
        if condition is None:
            n = self.act_dim + self.emb_dim
            h = F.linear(torch.cat([x, t], -1), self.inp.weight[:, :n], self.inp.bias)
        else:
            h = self.inp(torch.cat([x, t, condition], -1))
        for block in self.blocks:
            h = block(h)
        return self.out(mish(h) if self.out_activation else h)
