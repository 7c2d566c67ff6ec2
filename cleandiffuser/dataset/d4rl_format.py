"""Reader and writer for D4RL-layout HDF5 files, without importing d4rl or gym.

File layout (as produced by D4RL)::

    observations        (N, obs_dim)  float
    actions             (N, act_dim)  float or int
    rewards             (N,)          float   ((N, 1) is accepted)
    terminals           (N,)          bool or 0/1
    timeouts            (N,)          bool or 0/1
    next_observations   (N, obs_dim)  optional
    infos/*             optional per-step arrays (kept when their length is N)
    metadata/*          optional datasets and/or attributes (any nesting)

Row ``i`` is the transition (obs_i, act_i, rew_i, terminal_i). An episode ends at a row
whose ``terminals`` or ``timeouts`` flag is set; rows after the last such flag form a
trailing partial episode.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from ..serialization import atomic_path
from .validation import DatasetFormatError, check_array, check_dtype, check_same_length, require_keys

__all__ = [
    "REQUIRED_KEYS",
    "read_d4rl_hdf5",
    "validate_d4rl_arrays",
    "d4rl_qlearning_dataset",
    "d4rl_episodes",
    "qlearning_from_arrays",
    "episodes_from_arrays",
    "write_d4rl_hdf5",
]

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")

# key -> (dtype kind, allowed ndims)
_SPEC = {
    "observations": ("float", (2,)),
    "next_observations": ("float", (2,)),
    "actions": ("numeric", (1, 2)),
    "rewards": ("numeric", (1, 2)),
    "terminals": ("flag", (1, 2)),
    "timeouts": ("flag", (1, 2)),
}


# --------------------------------------------------------------------------- validation
def validate_d4rl_arrays(arrays: Mapping[str, Any], file="<in-memory data>") -> dict:
    """Validate D4RL-style arrays and return normalized copies.

    Output dtypes: observations/next_observations/actions/rewards float32, actions 2-D,
    rewards 1-D, terminals/timeouts bool 1-D. Raises DatasetFormatError naming ``file``
    and the key on any problem.
    """
    require_keys(file, arrays.keys(), REQUIRED_KEYS)
    out: dict[str, np.ndarray] = {}
    for key, (kind, ndims) in _SPEC.items():
        if key not in arrays:
            continue
        arr = np.asarray(arrays[key])
        check_array(file, key, arr, kind=kind, ndim=ndims)
        if key in ("rewards", "terminals", "timeouts") and arr.ndim == 2:
            if arr.shape[1] != 1:
                raise DatasetFormatError(file, key, f"has shape {arr.shape}; expected (N,) or (N, 1)")
            arr = arr[:, 0]
        out[key] = arr
    lengths = {k: out[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations") if k in out}
    n = check_same_length(file, lengths)
    if n == 0:
        raise DatasetFormatError(file, "observations", "dataset is empty (0 rows)")
    if "next_observations" in out and out["next_observations"].shape[1:] != out["observations"].shape[1:]:
        raise DatasetFormatError(
            file,
            "next_observations",
            f"has shape {out['next_observations'].shape} but 'observations' has {out['observations'].shape}",
        )
    res = {
        "observations": out["observations"].astype(np.float32, copy=False),
        "actions": out["actions"].reshape(n, -1).astype(np.float32, copy=False),
        "rewards": out["rewards"].astype(np.float32, copy=False),
        "terminals": out["terminals"].astype(bool),
        "timeouts": out["timeouts"].astype(bool),
    }
    if "next_observations" in out:
        res["next_observations"] = out["next_observations"].astype(np.float32, copy=False)
    return res


# --------------------------------------------------------------------------- reading
def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _decode(value[()])
        if value.dtype.kind in "SO":
            return [_decode(v) for v in value.tolist()]
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_group(group: h5py.Group) -> dict:
    """Datasets and attributes of a group, recursively, as a nested dict."""
    out: dict[str, Any] = {k: _decode(v) for k, v in group.attrs.items()}
    for name, item in group.items():
        if isinstance(item, h5py.Group):
            out[name] = _read_group(item)
        elif isinstance(item, h5py.Dataset):
            out[name] = _decode(item[()])
    return out


def _open_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetFormatError(path, None, "is a directory, expected a D4RL .hdf5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetFormatError(path, None, f"cannot be opened as HDF5 ({e})") from None


def read_d4rl_hdf5(path) -> dict:
    """Read and validate a D4RL HDF5 file (opened read-only).

    Returns a dict with the validated arrays (see :func:`validate_d4rl_arrays`), plus
    ``infos`` (dict of per-step arrays found under ``infos/``) and ``metadata`` (nested
    dict of everything under ``metadata/``: datasets and attributes, strings decoded,
    scalars as Python numbers).
    """
    path = Path(path)
    with _open_h5(path) as f:
        top = [k for k in f.keys()]
        require_keys(path, top, REQUIRED_KEYS)
        raw: dict[str, np.ndarray] = {}
        for key, (kind, _) in _SPEC.items():
            if key not in f:
                continue
            item = f[key]
            if not isinstance(item, h5py.Dataset):
                raise DatasetFormatError(path, key, f"is an HDF5 {type(item).__name__}, expected a dataset (array)")
            check_dtype(path, key, item.dtype, kind)  # before loading: strings/objects fail fast
            raw[key] = item[()]
        infos: dict[str, Any] = {}
        if "infos" in f and isinstance(f["infos"], h5py.Group):
            infos = _read_group(f["infos"])
        metadata: dict[str, Any] = {}
        if "metadata" in f and isinstance(f["metadata"], h5py.Group):
            metadata = _read_group(f["metadata"])
    data = validate_d4rl_arrays(raw, file=path)
    n = data["observations"].shape[0]
    data["infos"] = {k: v for k, v in _flatten(infos).items() if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n}
    data["metadata"] = metadata
    return data


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


# --------------------------------------------------------------------------- conversion
def qlearning_from_arrays(data: Mapping[str, np.ndarray], terminate_on_end: bool = False,
                          file="<in-memory data>") -> dict:
    """D4RL ``qlearning_dataset`` on validated arrays.

    * A row whose ``timeouts`` flag is set is dropped (unless ``terminate_on_end``).
    * With ``next_observations`` in the data they are used as given; otherwise the next
      observation of row i is ``observations[i + 1]`` and the final row of the file
      (which has no successor) is dropped, as D4RL does.

    Returns ``observations, actions, next_observations, rewards, terminals`` as float32
    (terminals 0./1.). Raises DatasetFormatError naming ``file`` when no row is left.
    """
    obs = data["observations"]
    n = obs.shape[0]
    keep = np.ones(n, dtype=bool) if terminate_on_end else ~data["timeouts"]
    if "next_observations" in data:
        next_obs = data["next_observations"]
    else:
        next_obs = np.empty_like(obs)
        next_obs[:-1] = obs[1:]
        next_obs[-1] = obs[-1]
        keep = keep.copy()
        keep[-1] = False
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        _no_transitions(file, data, terminate_on_end)
    return {
        "observations": np.ascontiguousarray(obs[idx], dtype=np.float32),
        "actions": np.ascontiguousarray(data["actions"][idx], dtype=np.float32),
        "next_observations": np.ascontiguousarray(next_obs[idx], dtype=np.float32),
        "rewards": np.ascontiguousarray(data["rewards"][idx], dtype=np.float32),
        "terminals": data["terminals"][idx].astype(np.float32),
    }


def _no_transitions(file, data: Mapping[str, np.ndarray], terminate_on_end: bool) -> None:
    """Raise the error for data that leaves no transition to train on, saying why."""
    n = data["observations"].shape[0]
    timeouts = int(np.count_nonzero(data["timeouts"]))
    reasons = []
    if not terminate_on_end and timeouts:
        reasons.append(f"{timeouts} of them timeouts (dropped: their next observation is not in the data)")
    if "next_observations" not in data:
        reasons.append("the last row has no successor (the file has no next_observations)")
    raise DatasetFormatError(file, "observations", f"no usable transitions: {n} row(s), "
                             + "; ".join(reasons) + "; a dataset needs at least one step with a next observation")


def episodes_from_arrays(data: Mapping[str, Any]) -> list[dict]:
    """Split validated arrays into episodes at rows with terminals or timeouts set.

    A trailing partial episode (no flag on its last row) is kept. Each episode dict has
    ``observations (T, o)``, ``actions (T, a)``, ``rewards (T,)`` (float32),
    ``terminals (T,)``, ``timeouts (T,)`` (bool), ``next_observations (T, o)`` only when
    the data has them (without them the last step of an episode has no successor in the
    file), and ``infos`` (per-step arrays sliced to the episode) when present.
    """
    ends = np.flatnonzero(data["terminals"] | data["timeouts"]) + 1
    n = data["observations"].shape[0]
    bounds = np.concatenate([[0], ends, [n] if (len(ends) == 0 or ends[-1] != n) else []]).astype(int)
    keys = ["observations", "actions", "rewards", "terminals", "timeouts"]
    if "next_observations" in data:
        keys.append("next_observations")
    infos = data.get("infos") or {}
    episodes = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        ep = {k: data[k][s:e] for k in keys}
        if infos:
            ep["infos"] = {k: v[s:e] for k, v in infos.items()}
        episodes.append(ep)
    return episodes


def d4rl_qlearning_dataset(path, terminate_on_end: bool = False) -> dict:
    """``qlearning_dataset`` of a D4RL HDF5 file (see :func:`qlearning_from_arrays`)."""
    return qlearning_from_arrays(read_d4rl_hdf5(path), terminate_on_end=terminate_on_end, file=path)


def d4rl_episodes(path) -> list[dict]:
    """Episodes of a D4RL HDF5 file (see :func:`episodes_from_arrays`)."""
    return episodes_from_arrays(read_d4rl_hdf5(path))


# --------------------------------------------------------------------------- writing
def _write_value(group: h5py.Group, name: str, value: Any, file) -> None:
    if isinstance(value, Mapping):
        sub = group.require_group(name)
        for k, v in value.items():
            _write_value(sub, str(k), v, file)
        return
    if value is None:
        return
    if isinstance(value, str):
        group.create_dataset(name, data=value, dtype=h5py.string_dtype("utf-8"))
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        group.create_dataset(name, data=list(value), dtype=h5py.string_dtype("utf-8"))
        return
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind in "OUS":
        raise DatasetFormatError(file, f"{group.name.strip('/')}/{name}".lstrip("/"), f"cannot store value of type {type(value).__name__}")
    group.create_dataset(name, data=arr)


def write_d4rl_hdf5(path, data: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``data`` as a D4RL-layout HDF5 file at ``path`` (atomically: a temporary
    file in the same directory is renamed over ``path`` only after a complete write).

    ``data`` needs the required keys (observations, actions, rewards, terminals,
    timeouts); ``next_observations`` is optional; ``infos`` may be a dict of per-step
    arrays (or use keys like ``"infos/qpos"``). Any other array-valued keys are written
    as top-level datasets. Arrays are validated first (DatasetFormatError on problems).
    Stored dtypes follow D4RL: float32 observations/actions/rewards, bool flags.
    ``metadata`` (nested dict of str / numbers / arrays / lists of str) goes to
    ``metadata/*`` datasets. Returns the path.
    """
    path = Path(path)
    arrays = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in data.items()}
    clean = validate_d4rl_arrays(arrays, file=path)
    infos = dict(arrays.get("infos") or {})
    extras = {}
    for k, v in arrays.items():
        if k in clean or k == "infos":
            continue
        if k.startswith("infos/"):
            infos[k[len("infos/"):]] = v
        elif k.startswith("metadata/"):
            metadata = {**(metadata or {}), k[len("metadata/"):]: v}
        else:
            extras[k] = v
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for k, v in clean.items():
            f.create_dataset(k, data=v)
        for k, v in extras.items():
            _write_value(f, k, v, path)
        if infos:
            _write_value(f, "infos", infos, path)
        f.require_group("metadata")
        for k, v in (metadata or {}).items():
            _write_value(f["metadata"], str(k), v, path)
    return path
