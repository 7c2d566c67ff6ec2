import torch
import torch.nn as nn

from cleandiffuser.nn_diffusion.embeddings import NoiseEmbedding


class BaseNNClassifier(nn.Module):
    """A noise-conditioned scalar network for guidance: forward(x, noise, condition=None) -> (B, out_dim).

    x: (B, *x_shape) noisy sample; noise: (B,) float noise coordinate of order one (see
    nn_diffusion/embeddings.py), embedded by `self.map_noise`; condition: (B, ...) or None.
    The output is a logit / value / energy, interpreted by the wrappers in cleandiffuser.classifier.
    """

    def __init__(self, emb_dim: int, timestep_emb_type: str = "positional",
                 timestep_emb_params: dict | None = None):
        super().__init__()
        self.emb_dim = emb_dim
        self.map_noise = NoiseEmbedding(timestep_emb_type, emb_dim, timestep_emb_params)

    def forward(self, x: torch.Tensor, noise: torch.Tensor, condition: torch.Tensor | None = None):
        raise NotImplementedError
