import torch
import torch.nn as nn

from ..serialization import RecordsInit
from .embeddings import NoiseEmbedding


class BaseNNDiffusion(RecordsInit, nn.Module):
    """A denoiser backbone: forward(x, noise, condition=None) -> tensor shaped like x.

    x: (B, *x_shape) noisy data; noise: (B,) noise coordinate on the 1000 scale (see embeddings.py),
    or (B, 2) for consistency trajectory models; condition: (B, ...) embedding from an nn_condition
    or None (unconditional). Subclasses embed the noise with `self.map_noise(noise)`.
    """

    def __init__(self, emb_dim: int, timestep_emb_type: str = "positional",
                 timestep_emb_params: dict | None = None):
        super().__init__()
        self.emb_dim = emb_dim
        self.map_noise = NoiseEmbedding(timestep_emb_type, emb_dim, timestep_emb_params)

    def enable_target_time(self) -> None:
        """Accept noise of shape (B, 2) = (t, s); used by ConsistencyTrajectoryModel."""
        self.map_noise.enable_target_time()

    def forward(self, x: torch.Tensor, noise: torch.Tensor, condition: torch.Tensor | None = None):
        raise NotImplementedError
