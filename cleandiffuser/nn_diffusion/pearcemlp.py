import math

import torch
import torch.nn as nn

from .base import BaseNNDiffusion


def _block(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.GELU())


class PearceMlp(BaseNNDiffusion):
    """MLP denoiser of Pearce et al. (2023), "Imitating human behaviour with diffusion models".

    x: (B, act_dim), noise: (B,) (or (B, 2) after enable_target_time()),
    condition: (B, To, emb_dim) or (B, To * emb_dim), e.g. PearceObsCondition output, or None
    (same as zeros) -> (B, act_dim).
    The first block sees [embedded x, time embedding, condition]; each later block sees its
    predecessor's output (residual, scaled by 1/sqrt(2)) re-concatenated with raw x and the time
    embedding. Blocks are Linear -> LayerNorm -> GELU.
    """

    def __init__(self, act_dim: int, To: int = 1, emb_dim: int = 128, hidden_dim: int = 512,
                 timestep_emb_type: str = "fourier", timestep_emb_params: dict | None = None):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        self.cond_dim = To * emb_dim
        self.act_emb = nn.Sequential(nn.Linear(act_dim, emb_dim), nn.LeakyReLU(),
                                     nn.Linear(emb_dim, emb_dim))
        skip = hidden_dim + act_dim + emb_dim
        self.fc1 = _block(2 * emb_dim + self.cond_dim, hidden_dim)
        self.fc2 = _block(skip, hidden_dim)
        self.fc3 = _block(skip, hidden_dim)
        self.out = nn.Linear(skip, act_dim)

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        t = self.map_noise(noise)
        if condition is None:
            condition = x.new_zeros(x.shape[0], self.cond_dim)
        h = self.fc1(torch.cat([self.act_emb(x), t, condition.flatten(1)], -1))
        h = self.fc2(torch.cat([h, x, t], -1)) + h / math.sqrt(2)
        h = self.fc3(torch.cat([h, x, t], -1)) + h / math.sqrt(2)
        return self.out(torch.cat([h, x, t], -1))
