"""One entry point for offline data, whatever its source.

A *source* is one of:

1. a registered dataset name (see :func:`register_dataset`), e.g. a dataset this
   library generates; its resolver returns a path, which is then loaded as below;
2. a path to a D4RL HDF5 file (``.hdf5`` / ``.h5`` with top-level ``observations``);
3. a Minari dataset: its directory, its ``data`` directory, its ``main_data.hdf5``,
   or a dataset id found under ``$MINARI_DATASETS_PATH`` / ``~/.minari/datasets``;
4. an in-memory dict of D4RL-style arrays (observations, actions, rewards, terminals,
   timeouts[, next_observations]).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import h5py

from .d4rl_format import episodes_from_arrays, qlearning_from_arrays, read_d4rl_hdf5, validate_d4rl_arrays
from .minari_format import (
    find_minari_dataset,
    minari_datasets_root,
    minari_env_id,
    minari_episodes,
    minari_qlearning_dataset,
)
from .validation import DatasetFormatError

__all__ = [
    "register_dataset",
    "unregister_dataset",
    "registered_datasets",
    "resolve_source",
    "qlearning_dataset",
    "load_episodes",
    "recorded_env_id",
    "UnknownDatasetError",
]

PathLike = Union[str, os.PathLike]
Source = Union[PathLike, Mapping[str, Any]]

_REGISTRY: dict[str, Callable[[], PathLike]] = {}
_LOCK = threading.Lock()


class UnknownDatasetError(LookupError):
    """The source is neither a registered name, an existing path nor a Minari id."""


def register_dataset(name: str, resolver: Callable[[], PathLike] | PathLike, overwrite: bool = False) -> None:
    """Register ``name`` -> ``resolver``.

    ``resolver`` is called with no arguments when the name is loaded and must return the
    path of a D4RL HDF5 file or of a Minari dataset (it may generate/download the data
    first). A plain path is accepted too. Re-registering a name raises unless
    ``overwrite=True``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("dataset name must be a non-empty string")
    if not callable(resolver):
        fixed = resolver
        resolver = lambda: fixed  # noqa: E731
    with _LOCK:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"dataset name {name!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[name] = resolver


def unregister_dataset(name: str) -> None:
    """Remove a registered name (no error if absent)."""
    with _LOCK:
        _REGISTRY.pop(name, None)


def registered_datasets() -> list[str]:
    """Sorted list of registered dataset names."""
    with _LOCK:
        return sorted(_REGISTRY)


def _is_minari_file(path: Path) -> bool:
    if path.name == "main_data.hdf5":
        return True
    try:
        with h5py.File(path, "r") as f:
            return "observations" not in f and any(k.startswith("episode_") for k in f.keys())
    except OSError:
        return False


def resolve_source(source: PathLike) -> tuple[str, Path]:
    """Return ``(kind, path)`` with kind ``"d4rl"`` or ``"minari"`` for a source.

    Order: registered name, existing path, Minari dataset id. Raises
    :class:`UnknownDatasetError` listing the registered names and the accepted kinds of
    sources when nothing matches.
    """
    key = os.fspath(source)
    with _LOCK:
        resolver = _REGISTRY.get(key) if isinstance(key, str) else None
    if resolver is not None:
        resolved = resolver()
        if resolved is None:
            raise UnknownDatasetError(f"resolver of registered dataset {key!r} returned None instead of a path")
        if os.fspath(resolved) == key:
            raise UnknownDatasetError(f"resolver of registered dataset {key!r} returned the name itself")
        kind, path = _resolve_path(Path(os.fspath(resolved)).expanduser())
        if kind is None:
            raise FileNotFoundError(f"registered dataset {key!r} resolved to {resolved!s}, which does not exist")
        return kind, path
    kind, path = _resolve_path(Path(key).expanduser())
    if kind is not None:
        return kind, path
    names = registered_datasets()
    looks_like_path = isinstance(key, str) and (os.sep in key or key.endswith((".hdf5", ".h5")))
    raise UnknownDatasetError(
        (f"no such file or Minari dataset: {key}. " if looks_like_path else f"unknown dataset source {key!r}. ") +
        "Registered dataset names: "
        f"{', '.join(names) if names else '(none)'}. Accepted sources: a registered name; "
        f"a D4RL .hdf5/.h5 file path; a Minari dataset directory, its data/ directory or "
        f"main_data.hdf5; a Minari dataset id under {minari_datasets_root()} "
        f"(set MINARI_DATASETS_PATH to change it); or a dict of D4RL-style arrays."
    )


def _resolve_path(p: Path) -> tuple[str | None, Path]:
    if p.is_file():
        return ("minari" if _is_minari_file(p) else "d4rl"), p
    found = find_minari_dataset(p)
    if found is not None:
        return "minari", found
    return None, p


def qlearning_dataset(source: Source, terminate_on_end: bool = False) -> dict:
    """D4RL-style ``qlearning_dataset`` dict of float32 arrays ``observations, actions,
    next_observations, rewards, terminals`` for any supported source.

    For D4RL data, timeout steps are dropped (unless ``terminate_on_end``) and, without
    stored next observations, ``observations[i+1]`` is used and the file's final row is
    dropped. For Minari data every step is a transition (``terminate_on_end`` has no
    effect there).
    """
    if isinstance(source, Mapping):
        return qlearning_from_arrays(validate_d4rl_arrays(source), terminate_on_end=terminate_on_end)
    kind, path = resolve_source(source)
    if kind == "minari":
        return minari_qlearning_dataset(path)
    return qlearning_from_arrays(read_d4rl_hdf5(path), terminate_on_end=terminate_on_end, file=path)


def load_episodes(source: Source) -> list[dict]:
    """List of episode dicts (observations, actions, rewards, terminals, timeouts and,
    when available, next_observations / infos) for any supported source."""
    if isinstance(source, Mapping):
        return episodes_from_arrays(validate_d4rl_arrays(source))
    kind, path = resolve_source(source)
    if kind == "minari":
        return minari_episodes(path)
    return episodes_from_arrays(read_d4rl_hdf5(path))


def recorded_env_id(source: Source) -> str | None:
    """The gymnasium id a source says its data came from, or None when it does not say: a Minari dataset's
    ``eval_env_spec`` (else ``env_spec``) in its metadata.json, or ``metadata/env_id`` of a D4RL-format file (as
    this library's generated files record it). D4RL's own files and in-memory arrays record none."""
    if isinstance(source, Mapping):
        return None
    kind, path = resolve_source(source)
    if kind == "minari":
        return minari_env_id(path)
    with h5py.File(path, "r") as f:
        value = f.get("metadata/env_id")
        if not isinstance(value, h5py.Dataset):
            return None
        value = value[()]
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ += ["DatasetFormatError"]
