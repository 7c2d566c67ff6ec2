"""Generative models. Each class shares DiffusionModel's API: update(x0, condition) and
sample(prior, solver=..., sample_steps=..., condition_cfg=...) -> (x0, log)."""
from .base import DiffusionModel, load_model
from .consistency_model import ContinuousConsistencyModel
from .ctm import ConsistencyTrajectoryModel
from .diffusionsde import ContinuousDiffusionSDE, DiscreteDiffusionSDE
from .edm import ContinuousEDM
from .rectifiedflow import ContinuousRectifiedFlow, DiscreteRectifiedFlow

__all__ = [
    "DiffusionModel", "load_model", "DiscreteDiffusionSDE", "ContinuousDiffusionSDE", "ContinuousEDM",
    "ContinuousRectifiedFlow", "DiscreteRectifiedFlow", "ContinuousConsistencyModel",
    "ConsistencyTrajectoryModel",
]
