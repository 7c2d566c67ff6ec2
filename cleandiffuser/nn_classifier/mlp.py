import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from cleandiffuser.nn_condition.mlp import build_mlp

from ..utils.activations import Mish
from .base import BaseNNClassifier


class MLPNNClassifier(BaseNNClassifier):
    """MLP on [flatten(x), noise embedding, flatten(condition)] -> (B, out_dim).

    x_dim: size of one sample (an int, or a shape whose product is used; x of shape (B, *shape)
    is flattened). cond_dim: size of the flattened condition, or None/0 for an unconditional
    network, which raises if it is handed a condition.
    """

    def __init__(self, x_dim: int | Sequence[int], out_dim: int = 1, emb_dim: int = 64,
                 hidden_dims: int | Sequence[int] = (256, 256), activation: nn.Module | None = None,
                 timestep_emb_type: str = "positional", timestep_emb_params: dict | None = None,
                 cond_dim: int | None = None):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        self.x_dim = x_dim if isinstance(x_dim, int) else math.prod(x_dim)
        self.out_dim, self.cond_dim = out_dim, int(cond_dim or 0)
        self.mlp = build_mlp(self.x_dim + emb_dim + self.cond_dim, out_dim, hidden_dims,
                             activation if activation is not None else Mish())

    def forward(self, x: torch.Tensor, noise: torch.Tensor, condition: torch.Tensor | None = None):
        b = x.shape[0]
        parts = [x.reshape(b, -1), self.map_noise(noise)]
        if parts[0].shape[1] != self.x_dim:
            raise ValueError(f"x flattens to {parts[0].shape[1]} features, expected {self.x_dim}")
        if self.cond_dim:
            if condition is None:
                raise ValueError("this classifier was built with cond_dim and needs a condition")
            parts.append(condition.reshape(b, -1))
        elif condition is not None:
            raise ValueError("unconditional classifier (cond_dim=None) was given a condition")
        return self.mlp(torch.cat(parts, dim=-1))
