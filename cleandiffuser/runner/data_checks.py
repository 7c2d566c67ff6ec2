"""Checks of a run's training data against what the agents and the evaluation environment expect, made when
the data is loaded, before any training step:

* actions outside [-1, 1], the range every actor acts in (diffusion actors clip their samples to it, IQL's
  Gaussian mean is a tanh): warned about with how many and how far, or clipped with `clip_actions: true`;
* observation and action sizes that differ from the evaluation environment's (else the run fails only when it
  is evaluated, after training).
"""
from __future__ import annotations

import warnings

import numpy as np

from .config import ConfigError

__all__ = ["ACTION_LIMIT", "ActionBoundsWarning", "check_action_bounds", "check_env_fits_data", "env_sizes"]

#: the actors' action range is [-ACTION_LIMIT, ACTION_LIMIT]
ACTION_LIMIT = 1.0
# float32 rounding of data written as exactly +-1 is not a violation
_TOLERANCE = 1e-6


class ActionBoundsWarning(UserWarning):
    """A dataset's actions lie partly outside the actors' range [-1, 1]."""


def check_action_bounds(actions: np.ndarray, source, clip: bool = False, say=None) -> np.ndarray:
    """The dataset's actions, checked against [-1, 1]. Entries outside it cannot be reproduced by the policy
    (its actions are clipped to the range), so it would silently learn something else: with `clip` they are
    clipped here (right where the environment clips what it receives to [-1, 1], as MuJoCo's do), otherwise an
    ActionBoundsWarning says how many there are and how far out. `say`: also log the line there."""
    magnitude = np.abs(actions)
    outside = magnitude > ACTION_LIMIT + _TOLERANCE
    count = int(np.count_nonzero(outside))
    if count == 0:
        return actions
    summary = (f"{source}: {count:,} of {actions.size:,} action entries ({count / actions.size:.2%}) lie outside "
               f"[-{ACTION_LIMIT:g}, {ACTION_LIMIT:g}], the range the actor acts in (max |a| = "
               f"{float(magnitude.max()):.4g})")
    if clip:
        if say is not None:
            say(f"{summary}; clipped to the range (clip_actions=true)")
        return np.clip(actions, -ACTION_LIMIT, ACTION_LIMIT)
    message = (f"{summary}. The policy cannot reproduce them and learns a different behaviour: if the environment "
               "clips its actions to [-1, 1] (MuJoCo's do), set clip_actions=true to clip the data the same way; "
               "otherwise rescale the dataset's actions into [-1, 1] (and the policy's back before the environment)")
    warnings.warn(message, ActionBoundsWarning, stacklevel=2)
    if say is not None:
        say(f"warning: {message}")
    return actions


def env_sizes(env_id: str) -> tuple[int, int]:
    """(observation size, action size) of a gymnasium environment, from its spaces."""
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        return gym.spaces.flatdim(env.observation_space), gym.spaces.flatdim(env.action_space)
    finally:
        env.close()


def check_env_fits_data(env_id: str, dataset, obs_dim: int, act_dim: int, required: bool = True) -> None:
    """ConfigError naming both sizes and the env id when the evaluation environment's observations or actions
    are not the size of the data's. An environment that cannot be made here is an error when `required`
    (it will evaluate the run), else nothing is checked."""
    import gymnasium as gym

    try:
        env_obs, env_act = env_sizes(env_id)
    except (gym.error.Error, ImportError) as e:
        if not required:
            return
        raise ConfigError(f"evaluation environment {env_id!r} (of dataset {str(dataset)!r}) cannot be made here "
                          f"({type(e).__name__}: {e}); set env=<gymnasium id> or eval.episodes=0") from None
    for what, ours, theirs in (("observations", obs_dim, env_obs), ("actions", act_dim, env_act)):
        if ours != theirs:
            raise ConfigError(f"dataset {str(dataset)!r} has {what} of size {ours}, but the evaluation environment "
                              f"{env_id} has {what} of size {theirs}: set env=<the gymnasium id the data comes "
                              "from>, or train without evaluating (eval.episodes=0 env=null)")
