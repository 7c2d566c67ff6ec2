"""Generate D4RL-style offline datasets on gymnasium 1.x + MuJoCo 3.x.

Importing this package registers the generated dataset names
(``{halfcheetah,hopper,walker2d}-{random,medium,expert,medium-replay,medium-expert}-cd-v0``)
with :mod:`cleandiffuser.dataset`, so ``qlearning_dataset("halfcheetah-medium-cd-v0")``
loads the file from :func:`data_dir` (or says which command makes it). The import is
cheap: gymnasium, mujoco and the SAC code load only when used.

* ``python -m cleandiffuser.datagen.train_behaviour`` - SAC behaviour policies (resumable);
* :func:`make_dataset` / ``cleandiffuser dataset make NAME`` - build a named dataset;
* :func:`generate_dataset` - roll out any policy snapshot (or ``"random"``) to HDF5;
* :func:`dataset_info` / ``cleandiffuser dataset info PATH|NAME``.
"""
from .registry import (
    ENVS,
    KINDS,
    GeneratedDatasetMissingError,
    data_dir,
    dataset_name,
    dataset_path,
    generated_dataset_names,
    parse_dataset_name,
    register_generated_datasets,
)

register_generated_datasets()

_LAZY = {
    "rollout": "generate",
    "generate_dataset": "generate",
    "make_dataset": "generate",
    "dataset_info": "generate",
    "episode_returns": "generate",
    "BehaviourPolicyMissingError": "generate",
    "SACConfig": "sac",
    "SAC": "sac",
    "train_sac": "sac",
    "select_snapshots": "sac",
    "load_replay_transitions": "sac",
    "NumpyActor": "policy",
    "load_actor_snapshot": "policy",
    "save_actor_snapshot": "policy",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENVS",
    "KINDS",
    "GeneratedDatasetMissingError",
    "data_dir",
    "dataset_name",
    "dataset_path",
    "generated_dataset_names",
    "parse_dataset_name",
    "register_generated_datasets",
    *_LAZY,
]
