"""Denoiser backbones: forward(x, noise, condition=None) -> tensor shaped like x."""
from .base import BaseNNDiffusion
from .chitransformer import ChiTransformer
from .chiunet import ChiUNet1d
from .dit import DiT1d
from .dqlmlp import DQLMlp
from .idqlmlp import IDQLMlp
from .jannerunet import JannerUNet1d
from .pearcemlp import PearceMlp
from .pearcetransformer import PearceTransformer
from .sfbcunet import SfBCUNet

__all__ = ["BaseNNDiffusion", "ChiTransformer", "ChiUNet1d", "DiT1d", "DQLMlp", "IDQLMlp",
           "JannerUNet1d", "PearceMlp", "PearceTransformer", "SfBCUNet"]
