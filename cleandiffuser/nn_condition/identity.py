import torch

from .base import BaseNNCondition


class IdentityCondition(BaseNNCondition):
    """Passes the condition through unchanged (any shape (B, ...)); only applies CFG dropout."""

    def __init__(self, dropout: float = 0.25):
        super().__init__(dropout)

    def encode(self, condition: torch.Tensor) -> torch.Tensor:
        return condition
