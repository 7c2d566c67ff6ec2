from .base import BaseNNClassifier
from .mlp import MLPNNClassifier

__all__ = ["BaseNNClassifier", "MLPNNClassifier"]
