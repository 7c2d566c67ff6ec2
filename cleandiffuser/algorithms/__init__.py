"""Offline RL algorithms built on the generative models, each readable in one file."""
from .idql import ACTOR_KINDS, IDQLAgent, make_idql_actor
from .iql import IQLCritic

__all__ = ["ACTOR_KINDS", "IDQLAgent", "IQLCritic", "make_idql_actor"]
