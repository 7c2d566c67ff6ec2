import torch
import torch.nn as nn

from ..utils.activations import Mish
from .base import BaseNNDiffusion


class DQLMlp(BaseNNDiffusion):
    """Diffusion-QL's MLP denoiser for flat actions.

    x: (B, act_dim), noise: (B,) (or (B, 2) after enable_target_time()),
    condition: (B, obs_dim) or None (same as zeros) -> (B, act_dim).
    With an untrainable time embedding a Linear(emb, 2emb)-Mish-Linear(2emb, emb) follows it, as in
    the paper; the trainable embeddings already end in an MLP, so nothing is added for them.
    """

    def __init__(self, obs_dim: int, act_dim: int, emb_dim: int = 16, hidden_dim: int = 256,
                 timestep_emb_type: str = "positional", timestep_emb_params: dict | None = None):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        self.obs_dim = obs_dim
        self.time_mlp = (nn.Sequential(nn.Linear(emb_dim, emb_dim * 2), Mish(),
                                       nn.Linear(emb_dim * 2, emb_dim))
                         if timestep_emb_type.startswith("untrainable") else nn.Identity())
        self.mid = nn.Sequential(
            nn.Linear(act_dim + emb_dim + obs_dim, hidden_dim), Mish(),
            nn.Linear(hidden_dim, hidden_dim), Mish(),
            nn.Linear(hidden_dim, hidden_dim), Mish())
        self.out = nn.Linear(hidden_dim, act_dim)

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        t = self.time_mlp(self.map_noise(noise))
        if condition is None:
            condition = x.new_zeros(x.shape[0], self.obs_dim)
        return self.out(self.mid(torch.cat([x, t, condition], -1)))
