import torch
import torch.nn as nn

from .base import BaseNNCondition


class PearceObsCondition(BaseNNCondition):
    """Per-step linear observation embedding (as in Pearce et al. 2023, diffusion BC).

    Input: (B, obs_dim), treated as a history of length To=1, or (B, To, obs_dim).
    Output: (B, To, emb_dim), or (B, To * emb_dim) when `flatten=True`
    (so (B, obs_dim) with flatten=True gives (B, emb_dim)).
    """

    def __init__(self, obs_dim: int, emb_dim: int = 128, flatten: bool = False, dropout: float = 0.25):
        super().__init__(dropout)
        self.obs_dim, self.emb_dim, self.flatten = obs_dim, emb_dim, flatten
        self.linear = nn.Linear(obs_dim, emb_dim)

    def encode(self, condition: torch.Tensor) -> torch.Tensor:
        if condition.dim() == 2:
            condition = condition[:, None]
        if condition.dim() != 3 or condition.shape[-1] != self.obs_dim:
            raise ValueError(f"expected (B, {self.obs_dim}) or (B, To, {self.obs_dim}), "
                             f"got {tuple(condition.shape)}")
        emb = self.linear(condition)
        return emb.flatten(1) if self.flatten else emb
