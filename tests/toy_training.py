"""Shared helpers for the generative-model tests: small nets trained on 2-D toys."""
import torch

from cleandiffuser.nn_diffusion import IDQLMlp
from cleandiffuser.toy import gaussian_ring, sample_quality

BOUNDS = dict(x_max=torch.ones(1, 2), x_min=-torch.ones(1, 2))
FAST = dict(ema_rate=0.99, optim_params={"lr": 1e-3}, **BOUNDS)


def small_net(obs_dim: int = 0, **kw) -> IDQLMlp:
    return IDQLMlp(obs_dim, 2, emb_dim=32, hidden_dim=64, n_blocks=2, dropout=0.0, **kw)


def train(model, steps: int = 1500, batch: int = 256, n_modes: int = 8, **update_kw):
    for _ in range(steps):
        x, _ = gaussian_ring(batch, n_modes)
        model.update(x, **update_kw)
    return model


score = sample_quality
