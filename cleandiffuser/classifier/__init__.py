from .base import BaseClassifier
from .mse import CumRewClassifier, MSEClassifier
from .qgpo import QGPOClassifier

__all__ = ["BaseClassifier", "MSEClassifier", "CumRewClassifier", "QGPOClassifier"]
