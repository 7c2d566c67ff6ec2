import torch
import torch.nn as nn

from .base import BaseNNCondition


class LinearCondition(BaseNNCondition):
    """A single affine map on the last dimension: (B, ..., in_dim) -> (B, ..., out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.25):
        super().__init__(dropout)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim)

    def encode(self, condition: torch.Tensor) -> torch.Tensor:
        return self.linear(condition)
