import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.activations import dropout, mish
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


class IDQLMlp(BaseNNDiffusion):
    """IDQL's LN-ResNet denoiser for flat actions.

    x: (B, act_dim), noise: (B,) (or (B, 2) after enable_target_time()),
    condition: (B, obs_dim) or None -> (B, act_dim).
    The input layer sees concat[x, map_noise(noise), condition]; condition=None is exactly the same
    as a zero condition (the condition columns of the input layer are skipped, no zeros are built).
    """

    def __init__(self, obs_dim: int, act_dim: int, emb_dim: int = 64, hidden_dim: int = 256,
                 n_blocks: int = 3, dropout: float = 0.1, timestep_emb_type: str = "positional",
                 timestep_emb_params: dict | None = None):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.inp = nn.Linear(act_dim + emb_dim + obs_dim, hidden_dim)
        self.blocks = nn.ModuleList(_LNResBlock(hidden_dim, dropout) for _ in range(n_blocks))
        self.out = nn.Linear(hidden_dim, act_dim)

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        t = self.map_noise(noise)
        if condition is None:
            n = self.act_dim + self.emb_dim
            h = F.linear(torch.cat([x, t], -1), self.inp.weight[:, :n], self.inp.bias)
        else:
            h = self.inp(torch.cat([x, t, condition], -1))
        for block in self.blocks:
            h = block(h)
        return self.out(mish(h))
