"""Twin critic of Diffusion-QL (Wang et al. 2023)."""
import torch
import torch.nn as nn

from ..utils.activations import Mish


def _mlp(in_dim: int, hidden_dim: int) -> nn.Sequential:
    """Three Linear-Mish hidden layers, then Linear -> 1."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), Mish(),
                         nn.Linear(hidden_dim, hidden_dim), Mish(),
                         nn.Linear(hidden_dim, hidden_dim), Mish(),
                         nn.Linear(hidden_dim, 1))


class DQLCritic(nn.Module):
    """Twin Q(s, a). forward(obs, act) and both(obs, act) return (q1, q2), each (B, 1)
    (Diffusion-QL convention); q_min(obs, act) returns their elementwise minimum (B, 1)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.q1 = _mlp(obs_dim + act_dim, hidden_dim)
        self.q2 = _mlp(obs_dim + act_dim, hidden_dim)

    def both(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], dim=-1)
        return self.q1(x), self.q2(x)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.both(obs, act)

    def q_min(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.minimum(*self.both(obs, act))
