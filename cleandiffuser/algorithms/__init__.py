"""Offline RL algorithms built on the generative models, each readable in one file.

`ALGORITHMS` maps the name used by `cleandiffuser train NAME` to the agent class; each class has
`from_config(obs_dim, act_dim, agent_cfg, steps, device)` and its defaults in
`cleandiffuser/configs/NAME.yaml`.
"""
from .base import Agent
from .dbc import DBCAgent
from .dql import DQLAgent
from .edp import EDPAgent
from .fql import FQLAgent
from .idql import ACTOR_KINDS, IDQLAgent, make_idql_actor
from .iql import GaussianActor, IQLAgent, IQLCritic

ALGORITHMS: dict[str, type[Agent]] = {"iql": IQLAgent, "idql": IDQLAgent, "dql": DQLAgent, "edp": EDPAgent,
                                      "dbc": DBCAgent, "fql": FQLAgent}

__all__ = ["ACTOR_KINDS", "ALGORITHMS", "Agent", "DBCAgent", "DQLAgent", "EDPAgent", "FQLAgent", "GaussianActor", "IDQLAgent",
           "IQLAgent", "IQLCritic", "make_idql_actor"]
