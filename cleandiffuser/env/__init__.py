"""Gymnasium MuJoCo environments and D4RL-style normalized scores.

``make_env`` builds a seeded gymnasium (1.x) MuJoCo v5 environment; ``normalized_score``
maps returns to D4RL's 0-100 scale. gymnasium/mujoco are imported lazily, so the score
functions work without them (``pip install -e ".[mujoco]"`` for the environments).

The task side of imitation lives beside them, one module per simulator: :mod:`.robosuite` (Lift, Can, Square as
robomimic sees them) and :mod:`.pusht` (gym-pusht), each with seeded episodes, replay and policy evaluation;
:mod:`.lockstep` steps several environments with one batched policy call; :mod:`.video` writes rollout videos.
Scripted demonstrators that make datasets from them are in :mod:`cleandiffuser.datagen`.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from .evaluation import EvalResult, evaluate  # evaluation harness (gymnasium imported lazily)

__all__ = [
    "ENV_IDS",
    "REF_SCORES",
    "MAX_EPISODE_STEPS",
    "env_family",
    "env_id_for",
    "make_env",
    "require_mujoco",
    "normalized_score",
    "get_env_state",
    "set_env_state",
    "evaluate",
    "EvalResult",
]

#: short (D4RL) family name -> gymnasium id
ENV_IDS = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
}

#: D4RL reference returns (random, expert) used for normalization.
REF_SCORES = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}

MAX_EPISODE_STEPS = 1000


def env_family(name: str) -> str:
    """Family (``halfcheetah``, ``hopper``, ``walker2d``) of an env id or dataset name,
    e.g. ``HalfCheetah-v5``, ``halfcheetah``, ``halfcheetah-medium-cd-v0``,
    ``hopper-medium-v2``. Raises KeyError for anything else."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    for fam in ENV_IDS:
        if key.startswith(fam):
            return fam
    raise KeyError(f"unknown environment {name!r}; known: {', '.join(ENV_IDS)}")


def env_id_for(name: str) -> str:
    """Gymnasium id for a family/dataset name; gymnasium ids pass through unchanged."""
    if re.fullmatch(r"[A-Za-z0-9]+-v\d+", str(name)) and str(name)[0].isupper():
        return str(name)
    return ENV_IDS[env_family(name)]


def normalized_score(env_name: str, returns):
    """D4RL normalized score ``100 * (R - random) / (expert - random)``.

    ``env_name`` is an env id or dataset name (see :func:`env_family`); ``returns`` a
    number (returns a float) or an array (returns an array)."""
    lo, hi = REF_SCORES[env_family(env_name)]
    r = np.asarray(returns, dtype=np.float64)
    s = 100.0 * (r - lo) / (hi - lo)
    return float(s) if s.ndim == 0 else s


def require_mujoco():
    """Import mujoco, turning a renderer failure into an error that says what to do: with ``MUJOCO_GL`` set
    (egl, osmesa, glfw) mujoco loads that OpenGL backend at import and fails obscurely when its system library
    is missing (e.g. "'NoneType' object has no attribute 'eglQueryString'" without libEGL)."""
    try:
        import mujoco
    except ImportError as e:
        raise ImportError(f'mujoco is needed for the MuJoCo environments: pip install -e ".[mujoco]" ({e})') from e
    except Exception as e:
        backend = os.environ.get("MUJOCO_GL")
        if not backend:
            raise
        raise RuntimeError(
            f"mujoco failed to import with MUJOCO_GL={backend!r} ({type(e).__name__}: {e}). MUJOCO_GL picks the "
            f"OpenGL backend and its system library must be installed (egl: libegl1; osmesa: libosmesa6; glfw: "
            f"a display). Training and state-based evaluation need no rendering: unset MUJOCO_GL.") from e
    return mujoco


def make_env(env_id: str, seed: int | None = None, max_episode_steps: int = MAX_EPISODE_STEPS, **kwargs):
    """A gymnasium MuJoCo environment (e.g. ``HalfCheetah-v5``; family names such as
    ``halfcheetah`` work too) with a ``max_episode_steps`` time limit (truncation).

    With ``seed`` the environment is reset once with that seed (so later plain
    ``env.reset()`` calls continue a seeded stream) and its action/observation spaces are
    seeded; the returned env is ready to step from that first observation, which is kept
    in ``env.cd_first_obs`` for convenience.
    """
    try:
        import gymnasium as gym
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError('gymnasium/mujoco are needed: pip install -e ".[mujoco]"') from e
    require_mujoco()
    env = gym.make(env_id_for(env_id), max_episode_steps=max_episode_steps, **kwargs)
    if seed is not None:
        obs, _ = env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
        env.observation_space.seed(int(seed))
        env.cd_first_obs = obs
    return env


# --------------------------------------------------------------------------- exact state
def _time_limit(env):
    e = env
    while e is not None:
        if hasattr(e, "_elapsed_steps") and hasattr(e, "_max_episode_steps"):
            return e
        e = getattr(e, "env", None)
    return None


def get_env_state(env) -> tuple[dict, np.ndarray]:
    """Everything needed to continue a MuJoCo env bit-for-bit: ``(json_state, sim_state)``
    with the full MuJoCo integration state (incl. solver warm start), the env's RNG state
    and the time-limit counter. JSON-serializable dict + float64 array."""
    import mujoco

    base = env.unwrapped
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    sim = np.empty(mujoco.mj_stateSize(base.model, spec), dtype=np.float64)
    mujoco.mj_getState(base.model, base.data, sim, spec)
    tl = _time_limit(env)
    info: dict[str, Any] = {
        "np_random": base.np_random.bit_generator.state,
        "elapsed_steps": None if tl is None else tl._elapsed_steps,
    }
    return info, sim


def set_env_state(env, info: dict, sim: np.ndarray) -> None:
    """Restore a state from :func:`get_env_state` (the env must have been reset once)."""
    import mujoco

    base = env.unwrapped
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(base.model, base.data, np.asarray(sim, dtype=np.float64), spec)
    mujoco.mj_forward(base.model, base.data)
    rng_state = info["np_random"]
    gen = np.random.Generator(getattr(np.random, rng_state["bit_generator"])())
    gen.bit_generator.state = rng_state
    base.np_random = gen
    tl = _time_limit(env)
    if tl is not None:
        tl._elapsed_steps = info["elapsed_steps"]
