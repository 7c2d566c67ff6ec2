"""Reader and writer for locally stored Minari datasets (HDF5 backend), without
importing minari, gymnasium or jax.

On-disk layout::

    <root>/<dataset_id>/data/metadata.json
    <root>/<dataset_id>/data/main_data.hdf5
        episode_0/                 attrs: id, total_steps (, seed, ...)
            observations  (T+1, obs_dim)   or a group of arrays for Dict spaces
            actions       (T, act_dim)     ((T,) for Discrete actions)
            rewards       (T,)
            terminations  (T,) bool
            truncations   (T,) bool
            infos/        optional
        episode_1/ ...

``<root>`` is ``$MINARI_DATASETS_PATH`` if set, else ``~/.minari/datasets``; dataset ids
may contain slashes (``namespace/env/name-v0``), which are sub-directories.

Dict observations are flattened: the leaves of the observation group are visited in
sorted key order (recursively for nested groups), each reshaped to ``(T+1, -1)``, cast to
float32 and concatenated along the last axis. Integer/bool leaves are accepted inside
Dict observations (discrete components); a plain (non-Dict) observation array must be
floating point.

Conversion: step t of an episode is the transition (observations[t], actions[t],
rewards[t], observations[t+1]) with terminal = terminations[t]. All steps are kept;
truncations only end episodes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from .validation import DatasetFormatError, check_array, check_dtype, check_same_length, require_keys

__all__ = [
    "MAIN_DATA_FILE",
    "METADATA_FILE",
    "minari_datasets_root",
    "find_minari_dataset",
    "resolve_minari_path",
    "read_minari_dataset",
    "minari_episodes",
    "minari_env_id",
    "minari_qlearning_dataset",
    "write_minari_dataset",
]

MAIN_DATA_FILE = "main_data.hdf5"
METADATA_FILE = "metadata.json"
EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")
_EPISODE_RE = re.compile(r"^episode_(\d+)$")


# --------------------------------------------------------------------------- locating
def minari_datasets_root() -> Path:
    """``$MINARI_DATASETS_PATH`` if set, else ``~/.minari/datasets`` (as Minari does)."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser() if env else Path.home() / ".minari" / "datasets"


def _main_file_in(path: Path) -> Path | None:
    if path.is_file():
        return path
    if path.is_dir():
        for cand in (path / MAIN_DATA_FILE, path / "data" / MAIN_DATA_FILE):
            if cand.is_file():
                return cand
    return None


def find_minari_dataset(source) -> Path | None:
    """Path of ``main_data.hdf5`` for ``source`` (dataset dir, its data dir, the file
    itself, or a dataset id under :func:`minari_datasets_root`), or None if not found."""
    p = Path(os.fspath(source)).expanduser()
    found = _main_file_in(p)
    if found is not None:
        return found
    if not p.is_absolute():
        return _main_file_in(minari_datasets_root() / p)
    return None


def resolve_minari_path(source) -> Path:
    """Like :func:`find_minari_dataset` but raises a clear error when nothing is found."""
    found = find_minari_dataset(source)
    if found is not None:
        return found
    p = Path(os.fspath(source)).expanduser()
    if p.is_dir():
        raise DatasetFormatError(p, None, f"directory holds neither {MAIN_DATA_FILE} nor data/{MAIN_DATA_FILE}")
    raise FileNotFoundError(
        f"Minari dataset {str(source)!r} not found: not a path, and no "
        f"{minari_datasets_root() / str(source) / 'data' / MAIN_DATA_FILE}"
    )


# --------------------------------------------------------------------------- reading
def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _decode(value[()])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_infos(group: h5py.Group) -> dict:
    out = {}
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            out[k] = _read_infos(v)
        elif isinstance(v, h5py.Dataset):
            out[k] = v[()]
    return out


def _leaves(group: h5py.Group, prefix: str) -> list[tuple[str, h5py.Dataset]]:
    out = []
    for k in sorted(group.keys()):
        item = group[k]
        if isinstance(item, h5py.Group):
            out.extend(_leaves(item, f"{prefix}/{k}"))
        else:
            out.append((f"{prefix}/{k}", item))
    return out


def _read_observations(file: Path, ep: str, item) -> np.ndarray:
    key = f"{ep}/observations"
    if isinstance(item, h5py.Dataset):
        check_dtype(file, key, item.dtype, "float")
        return check_array(file, key, item[()], kind="float", ndim=2)
    leaves = _leaves(item, key)
    if not leaves:
        raise DatasetFormatError(file, key, "is an empty group (Dict observation space without arrays)")
    parts = []
    for leaf_key, ds in leaves:
        check_dtype(file, leaf_key, ds.dtype, "flag")  # bool / int / float allowed inside Dict spaces
        arr = ds[()]
        if arr.ndim == 0:
            raise DatasetFormatError(file, leaf_key, "is a scalar; expected per-step array of shape (T+1, ...)")
        check_array(file, leaf_key, arr, kind="flag" if arr.dtype.kind == "b" else "numeric", ndim=range(1, 8))
        parts.append((leaf_key, arr.reshape(arr.shape[0], -1)))
    check_same_length(file, dict(parts))
    return np.concatenate([a.astype(np.float32) for _, a in parts], axis=1)


def _read_episode(file: Path, f: h5py.File, name: str) -> dict:
    grp = f[name]
    if not isinstance(grp, h5py.Group):
        raise DatasetFormatError(file, name, "is not an HDF5 group")
    require_keys(file, grp.keys(), EPISODE_KEYS, group=name)
    obs = _read_observations(file, name, grp["observations"])
    arrays = {"observations": obs}
    specs = {"actions": ("numeric", (1, 2)), "rewards": ("numeric", (1, 2)), "terminations": ("flag", (1, 2)), "truncations": ("flag", (1, 2))}
    for k, (kind, ndims) in specs.items():
        item = grp[k]
        key = f"{name}/{k}"
        if not isinstance(item, h5py.Dataset):
            raise DatasetFormatError(file, key, "is an HDF5 group; only array (Box/Discrete) spaces are supported here")
        check_dtype(file, key, item.dtype, kind)
        arr = check_array(file, key, item[()], kind=kind, ndim=ndims)
        if k != "actions" and arr.ndim == 2:
            if arr.shape[1] != 1:
                raise DatasetFormatError(file, key, f"has shape {arr.shape}; expected (T,) or (T, 1)")
            arr = arr[:, 0]
        arrays[k] = arr
    t = check_same_length(
        file, {f"{name}/{k}": arrays[k] for k in ("actions", "rewards", "terminations", "truncations", "observations")},
        expected={f"{name}/observations": 1},
    )
    attrs = {k: _decode(v) for k, v in grp.attrs.items()}
    if "total_steps" in attrs and int(attrs["total_steps"]) != t:
        raise DatasetFormatError(file, f"{name}/total_steps", f"attribute says {attrs['total_steps']} steps but the arrays hold {t}")
    ep = {
        "id": int(attrs.get("id", _EPISODE_RE.match(name).group(1))),
        "observations": arrays["observations"].astype(np.float32, copy=False),
        "actions": arrays["actions"].reshape(t, -1).astype(np.float32, copy=False),
        "rewards": arrays["rewards"].astype(np.float32, copy=False),
        "terminations": arrays["terminations"].astype(bool),
        "truncations": arrays["truncations"].astype(bool),
        "attrs": attrs,
    }
    if "infos" in grp:
        ep["infos"] = _read_infos(grp["infos"]) if isinstance(grp["infos"], h5py.Group) else grp["infos"][()]
    return ep


def _read_metadata_json(main_file: Path) -> dict[str, Any]:
    """The metadata.json beside ``main_data.hdf5`` ({} when absent)."""
    meta_path = main_file.parent / METADATA_FILE
    if not meta_path.is_file():
        return {}
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(meta_path, None, f"is not valid JSON ({e})") from None
    if not isinstance(metadata, dict):
        raise DatasetFormatError(meta_path, None, "must hold a JSON object")
    return metadata


def minari_env_id(source) -> str | None:
    """The gymnasium id in a Minari dataset's metadata: its ``eval_env_spec``, else ``env_spec`` (None if neither)."""
    main_file = resolve_minari_path(source)
    metadata = _read_metadata_json(main_file)
    for key in ("eval_env_spec", "env_spec"):
        spec = metadata.get(key)
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError:
                raise DatasetFormatError(main_file.parent / METADATA_FILE, key,
                                         "is not a JSON environment spec") from None
        if isinstance(spec, dict) and isinstance(spec.get("id"), str):
            return spec["id"]
    return None


def read_minari_dataset(source) -> dict:
    """Read and validate a Minari dataset (HDF5 opened read-only).

    Returns ``{"path": main_data.hdf5 path, "metadata": dict from metadata.json (plus
    root attributes of the HDF5 file), "episodes": [raw episodes]}`` where each raw
    episode has ``id``, ``observations (T+1, o)`` (float32, Dict spaces flattened),
    ``actions (T, a)``, ``rewards (T,)`` float32, ``terminations``/``truncations (T,)``
    bool, ``attrs`` and optionally ``infos``. Episodes are ordered by their number.
    """
    path = resolve_minari_path(source)
    metadata = _read_metadata_json(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetFormatError(path, None, f"cannot be opened as HDF5 ({e})") from None
    with f:
        for k, v in f.attrs.items():  # older Minari versions kept metadata as root attributes
            metadata.setdefault(k, _decode(v))
        names = [k for k in f.keys() if _EPISODE_RE.match(k)]
        if not names:
            raise DatasetFormatError(path, "episode_0", f"no episode_<i> groups found; keys found: {sorted(f.keys())}")
        names.sort(key=lambda k: int(_EPISODE_RE.match(k).group(1)))
        episodes = [_read_episode(path, f, name) for name in names]
    return {"path": path, "metadata": metadata, "episodes": episodes}


def _to_common_episode(ep: Mapping[str, Any]) -> dict:
    out = {
        "id": ep["id"],
        "observations": ep["observations"][:-1],
        "next_observations": ep["observations"][1:],
        "actions": ep["actions"],
        "rewards": ep["rewards"],
        "terminals": ep["terminations"],
        "timeouts": ep["truncations"],
    }
    if "infos" in ep:
        out["infos"] = ep["infos"]
    return out


def minari_episodes(source) -> list[dict]:
    """Episodes in the common format: ``observations``/``next_observations (T, o)``,
    ``actions (T, a)``, ``rewards (T,)`` float32, ``terminals`` (= terminations) and
    ``timeouts`` (= truncations) ``(T,)`` bool, ``id``, and ``infos`` when present."""
    return [_to_common_episode(ep) for ep in read_minari_dataset(source)["episodes"]]


def minari_qlearning_dataset(source) -> dict:
    """All steps of all episodes as a D4RL-style qlearning dict (float32 arrays:
    observations, actions, next_observations, rewards, terminals)."""
    eps = [ep for ep in minari_episodes(source)]
    if sum(len(ep["actions"]) for ep in eps) == 0:
        raise DatasetFormatError(resolve_minari_path(source), "actions",
                                 f"no usable transitions: its {len(eps)} episode(s) have no steps")
    cat = lambda k: np.concatenate([ep[k] for ep in eps], axis=0)  # noqa: E731
    return {
        "observations": cat("observations").astype(np.float32, copy=False),
        "actions": cat("actions").astype(np.float32, copy=False),
        "next_observations": cat("next_observations").astype(np.float32, copy=False),
        "rewards": cat("rewards").astype(np.float32, copy=False),
        "terminals": cat("terminals").astype(np.float32),
    }


# --------------------------------------------------------------------------- writing
def _np(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return x if isinstance(x, Mapping) else np.asarray(x)


def _box_space(arr: np.ndarray) -> dict:
    shape = list(arr.shape[1:])
    return {
        "type": "Box",
        "dtype": str(arr.dtype),
        "shape": shape,
        "low": np.full(shape, -np.inf).tolist(),
        "high": np.full(shape, np.inf).tolist(),
    }


def _obs_space(obs) -> dict:
    if isinstance(obs, Mapping):
        return {"type": "Dict", "subspaces": {k: _obs_space(v) for k, v in obs.items()}}
    return _box_space(obs)


def _prepare_episode(i: int, ep: Mapping[str, Any], file: Path) -> dict:
    name = f"episode_{i}"
    ep = {k: _np(v) for k, v in ep.items()}
    for alias, key in (("terminals", "terminations"), ("timeouts", "truncations")):
        if key not in ep and alias in ep:
            ep[key] = ep[alias]
    require_keys(file, ep.keys(), ("observations", "actions", "rewards", "terminations"), group=name)
    actions = ep["actions"]
    if not isinstance(actions, np.ndarray):
        raise DatasetFormatError(file, f"{name}/actions", "must be an array")
    t = actions.shape[0]
    obs = ep["observations"]

    def fix_obs(o, key):
        if isinstance(o, Mapping):
            return {k: fix_obs(_np(v), f"{key}/{k}") for k, v in o.items()}
        check_array(file, key, o, kind="flag" if o.dtype.kind == "b" else "numeric", ndim=range(1, 8))
        if o.shape[0] == t + 1:
            return o
        if o.shape[0] == t and "next_observations" in ep:
            nxt = ep["next_observations"]
            for part in key.split("/")[2:]:
                nxt = nxt[part]
            return np.concatenate([o, np.asarray(nxt)[-1:]], axis=0)
        raise DatasetFormatError(
            file, key, f"has {o.shape[0]} rows; expected T+1 = {t + 1} (or T = {t} together with next_observations)"
        )

    obs = fix_obs(obs, f"{name}/observations")
    if not isinstance(obs, Mapping):
        check_array(file, f"{name}/observations", obs, kind="float", ndim=2)
    rewards = check_array(file, f"{name}/rewards", ep["rewards"], kind="numeric", ndim=1)
    terms = check_array(file, f"{name}/terminations", ep["terminations"], kind="flag", ndim=1).astype(bool)
    truncs = ep.get("truncations")
    truncs = np.zeros(t, dtype=bool) if truncs is None else check_array(
        file, f"{name}/truncations", truncs, kind="flag", ndim=1).astype(bool)
    check_array(file, f"{name}/actions", actions, kind="numeric", ndim=(1, 2))
    check_same_length(file, {f"{name}/actions": actions, f"{name}/rewards": rewards,
                             f"{name}/terminations": terms, f"{name}/truncations": truncs})
    out = {"observations": obs, "actions": actions, "rewards": rewards, "terminations": terms, "truncations": truncs}
    if ep.get("infos") is not None:
        out["infos"] = ep["infos"]
    if ep.get("seed") is not None:
        out["seed"] = int(np.asarray(ep["seed"]))
    return out


def _write_tree(group: h5py.Group, name: str, value) -> None:
    if isinstance(value, Mapping):
        sub = group.create_group(name)
        for k, v in value.items():
            _write_tree(sub, str(k), _np(v))
    else:
        group.create_dataset(name, data=value)


def write_minari_dataset(
    root,
    dataset_id: str,
    episodes: Sequence[Mapping[str, Any]],
    env_spec: Any = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``episodes`` as a Minari HDF5 dataset under ``<root>/<dataset_id>/data``.

    Each episode needs ``observations`` ``(T+1, o)`` (or a dict of such arrays), or
    ``(T, o)`` together with ``next_observations`` (the format returned by
    :func:`minari_episodes` / D4RL episodes with next observations); ``actions (T, ...)``,
    ``rewards (T,)``, ``terminations`` (alias ``terminals``) and optionally
    ``truncations`` (alias ``timeouts``; default all False), ``infos`` (dict of arrays)
    and ``seed``. ``env_spec`` may be a JSON string, a dict, or an object with
    ``to_json()``. ``metadata`` adds keys to metadata.json. Everything is validated
    before anything is written. Returns the dataset directory ``<root>/<dataset_id>``.
    """
    root = Path(root)
    ds_dir = root / dataset_id
    data_dir = ds_dir / "data"
    main = data_dir / MAIN_DATA_FILE
    if main.exists() and not overwrite:
        raise FileExistsError(f"{main} already exists (pass overwrite=True to replace it)")
    if len(episodes) == 0:
        raise ValueError("write_minari_dataset: no episodes given")
    prepared = [_prepare_episode(i, ep, main) for i, ep in enumerate(episodes)]

    total_steps = int(sum(ep["actions"].shape[0] for ep in prepared))
    acts = prepared[0]["actions"]
    if acts.ndim == 1 and acts.dtype.kind in "iu":
        all_a = np.concatenate([ep["actions"] for ep in prepared])
        act_space = {"type": "Discrete", "dtype": "int64", "start": int(all_a.min()), "n": int(all_a.max() - all_a.min() + 1)}
    else:
        act_space = _box_space(acts if acts.ndim == 2 else acts[:, None])
    meta: dict[str, Any] = {
        "dataset_id": dataset_id,
        "total_episodes": len(prepared),
        "total_steps": total_steps,
        "data_format": "hdf5",
        "observation_space": json.dumps(_obs_space(prepared[0]["observations"])),
        "action_space": json.dumps(act_space),
    }
    if env_spec is not None:
        if hasattr(env_spec, "to_json"):
            env_spec = env_spec.to_json()
        meta["env_spec"] = env_spec if isinstance(env_spec, str) else json.dumps(env_spec)
    meta.update(dict(metadata or {}))

    data_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".minari_tmp_", dir=data_dir))
    try:
        with h5py.File(tmp_dir / MAIN_DATA_FILE, "w", track_order=True) as f:
            for i, ep in enumerate(prepared):
                g = f.create_group(f"episode_{i}")
                g.attrs["id"] = i
                g.attrs["total_steps"] = int(ep["actions"].shape[0])
                if "seed" in ep:
                    g.attrs["seed"] = ep["seed"]
                for k in EPISODE_KEYS:
                    _write_tree(g, k, ep[k])
                if "infos" in ep:
                    _write_tree(g, "infos", ep["infos"])
        (tmp_dir / METADATA_FILE).write_text(json.dumps(meta))
        os.replace(tmp_dir / MAIN_DATA_FILE, main)
        os.replace(tmp_dir / METADATA_FILE, data_dir / METADATA_FILE)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ds_dir
