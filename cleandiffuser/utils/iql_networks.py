"""Critics for IQL-style value learning (used by IDQL): twin Q(s, a) and V(s)."""
import torch
import torch.nn as nn

from ..utils.activations import Mish


def _mlp(in_dim: int, hidden_dim: int, layer_norm: bool) -> nn.Sequential:
    """Linear-[LayerNorm]-Mish x 2 hidden layers, then Linear -> 1."""
    layers: list[nn.Module] = []
    for d in (in_dim, hidden_dim):
        layers.append(nn.Linear(d, hidden_dim))
        if layer_norm:
            layers.append(nn.LayerNorm(hidden_dim))
        layers.append(Mish())
    layers.append(nn.Linear(hidden_dim, 1))
    return nn.Sequential(*layers)


class IDQLQNet(nn.Module):
    """Twin Q network. forward(obs, act) -> min(q1, q2) (B, 1); both(obs, act) -> (q1, q2).
    obs (B, obs_dim) and act (B, act_dim) are concatenated; the two heads are independent MLPs."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256, layer_norm: bool = False):
        super().__init__()
        self.q1 = _mlp(obs_dim + act_dim, hidden_dim, layer_norm)
        self.q2 = _mlp(obs_dim + act_dim, hidden_dim, layer_norm)

    def both(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], dim=-1)
        return self.q1(x), self.q2(x)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.minimum(*self.both(obs, act))


class IDQLVNet(nn.Module):
    """State value network: forward(obs) -> (B, 1)."""

    def __init__(self, obs_dim: int, hidden_dim: int = 256, layer_norm: bool = False):
        super().__init__()
        self.v = _mlp(obs_dim, hidden_dim, layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.v(obs)
