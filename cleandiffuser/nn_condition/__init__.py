from .base import BaseNNCondition
from .identity import IdentityCondition
from .linear import LinearCondition
from .mlp import MLPCondition
from .multi_image import MultiImageObsCondition
from .pearce_obs import PearceObsCondition
from .resnet_image import ResNet18ImageCondition, SpatialSoftmax

__all__ = [
    "BaseNNCondition",
    "IdentityCondition",
    "LinearCondition",
    "MLPCondition",
    "PearceObsCondition",
    "ResNet18ImageCondition",
    "SpatialSoftmax",
    "MultiImageObsCondition",
]
