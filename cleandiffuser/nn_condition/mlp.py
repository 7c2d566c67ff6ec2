import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..utils.activations import Mish
from .base import BaseNNCondition


def build_mlp(in_dim: int, out_dim: int, hidden_dims: int | Sequence[int] = (256,),
              act: nn.Module | None = None) -> nn.Sequential:
    """Linear/act stack in_dim -> hidden_dims... -> out_dim, no activation after the last layer.

    `act` is deep-copied for every hidden layer, so a stateful activation (e.g. PReLU) is not shared.
    """
    if isinstance(hidden_dims, int):
        hidden_dims = (hidden_dims,)
    act = Mish() if act is None else act
    dims = [in_dim, *hidden_dims]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), copy.deepcopy(act)]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class MLPCondition(BaseNNCondition):
    """An MLP on the last dimension: (B, ..., in_dim) -> (B, ..., out_dim).

    hidden_dims: an int (one hidden layer) or a sequence of widths; `act` follows every hidden layer.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: int | Sequence[int] = (256,),
                 act: nn.Module | None = None, dropout: float = 0.25):
        super().__init__(dropout)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mlp = build_mlp(in_dim, out_dim, hidden_dims, act if act is not None else Mish())

    def encode(self, condition: torch.Tensor) -> torch.Tensor:
        return self.mlp(condition)
