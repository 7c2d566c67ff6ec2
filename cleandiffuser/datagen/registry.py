"""Names and locations of the datasets this library generates.

Names follow D4RL's pattern with a ``cd`` (cleandiffuser) tag so they never pass for
D4RL's own files: ``{env}-{kind}-cd-v0``, e.g. ``halfcheetah-medium-cd-v0``.
Files live in :func:`data_dir` (``$CLEANDIFFUSER_DATA`` or
``~/.cache/cleandiffuser/datasets``) as ``NAME.hdf5``.

This module is import-light (no gymnasium, no torch) so that registering the names is
cheap.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..dataset.sources import register_dataset

__all__ = [
    "ENVS",
    "KINDS",
    "TAG",
    "GeneratedDatasetMissingError",
    "data_dir",
    "dataset_name",
    "dataset_path",
    "parse_dataset_name",
    "generated_dataset_names",
    "register_generated_datasets",
]

#: dataset env prefix -> gymnasium id
ENVS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert")
TAG = "cd-v0"

_NAME_RE = re.compile(r"^(%s)-(%s)-%s$" % ("|".join(ENVS), "|".join(sorted(KINDS, key=len, reverse=True)), re.escape(TAG)))


class GeneratedDatasetMissingError(FileNotFoundError):
    """A generated dataset name is registered but its file has not been made yet."""


def data_dir() -> Path:
    """Directory of generated datasets: ``$CLEANDIFFUSER_DATA``, else
    ``$XDG_CACHE_HOME/cleandiffuser/datasets``, else ``~/.cache/cleandiffuser/datasets``."""
    env = os.environ.get("CLEANDIFFUSER_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "cleandiffuser" / "datasets"


def dataset_name(env: str, kind: str) -> str:
    """``dataset_name("halfcheetah", "medium") == "halfcheetah-medium-cd-v0"``."""
    name = f"{env}-{kind}-{TAG}"
    parse_dataset_name(name)
    return name


def parse_dataset_name(name: str) -> tuple[str, str]:
    """``"hopper-medium-replay-cd-v0" -> ("hopper", "medium-replay")``; ValueError otherwise."""
    m = _NAME_RE.match(str(name))
    if not m:
        raise ValueError(
            f"{name!r} is not a generated dataset name; expected ENV-KIND-{TAG} with ENV in "
            f"{{{', '.join(ENVS)}}} and KIND in {{{', '.join(KINDS)}}}"
        )
    return m.group(1), m.group(2)


def dataset_path(name: str) -> Path:
    """Where the file of generated dataset ``name`` lives (it may not exist yet)."""
    parse_dataset_name(name)
    return data_dir() / f"{name}.hdf5"


def generated_dataset_names() -> list[str]:
    return [dataset_name(e, k) for e in ENVS for k in KINDS]


def make_command(name: str) -> str:
    return f"cleandiffuser dataset make {name}"


def _resolver(name: str):
    def resolve() -> Path:
        path = dataset_path(name)
        if not path.is_file():
            raise GeneratedDatasetMissingError(
                f"dataset {name!r} has not been generated yet: no file {path}. Make it with\n"
                f"    {make_command(name)}\n"
                f"(needs the 'mujoco' extra: pip install -e \".[mujoco]\"; set CLEANDIFFUSER_DATA to "
                f"change the data directory)."
            )
        return path

    return resolve


def register_generated_datasets() -> None:
    """Register every generated dataset name with :mod:`cleandiffuser.dataset` (idempotent)."""
    for name in generated_dataset_names():
        register_dataset(name, _resolver(name), overwrite=True)
