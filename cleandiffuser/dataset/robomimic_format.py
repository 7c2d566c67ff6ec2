"""Reader and writer for robomimic-layout HDF5 demonstration files (no robomimic import).

File layout (as robomimic's own datasets and ``dataset_states_to_obs.py`` produce)::

    data/                          attrs: total (int, sum of num_samples), env_args (JSON string)
        demo_0/                    attrs: num_samples (int), optionally model_file (MJCF XML string)
            actions     (T, A)
            states      (T, S)     simulator states (for replay / resets)
            rewards     (T,)
            dones       (T,)
            obs/<key>   (T, ...)   low-dim float arrays, images uint8 (T, H, W, C)
            next_obs/<key>         optional, same shapes as obs/<key>
        demo_1/ ...
    mask/<filter_key>              optional: byte strings of demo names, e.g. mask/train, mask/valid

Demos are listed in numeric order (``demo_2`` before ``demo_10``). Every problem is reported
as :class:`~cleandiffuser.dataset.validation.DatasetFormatError` naming the file, the HDF5 key
and (where useful) the keys that are available.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from ..serialization import atomic_path
from .validation import DatasetFormatError

__all__ = ["RobomimicData", "read_robomimic_hdf5", "write_robomimic_hdf5", "robomimic_demo_names"]

_DEMO_RE = re.compile(r"^demo_(\d+)$")


def _demo_sort_key(name: str):
    m = _DEMO_RE.match(name)
    return (0, int(m.group(1)), "") if m else (1, 0, name)


def robomimic_demo_names(names) -> list[str]:
    """Sort demo names numerically (``demo_2`` < ``demo_10``); other names go last, by name."""
    return sorted((str(n) for n in names), key=_demo_sort_key)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _decode(value[()])
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class RobomimicData:
    """Contents of a robomimic file.

    Attributes:
        episodes: one dict per demo (in ``demo_names`` order) with ``obs`` (dict key ->
            (T, ...) array), ``actions`` (T, A), ``rewards`` (T,), ``dones`` (T,), ``states``
            (T, S) when the file has them, ``next_obs`` when requested, ``model_file`` (str)
            when the demo has that attribute.
        env_args: the decoded ``data.attrs["env_args"]`` ({} when absent).
        demo_names: demo group names, numeric order.
        filter_keys: names of the masks under ``mask/`` (e.g. ["train", "valid"]).
        path: the file read.
    """

    episodes: list[dict]
    env_args: dict
    demo_names: list[str]
    filter_keys: list[str] = field(default_factory=list)
    path: str = ""

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_samples(self) -> int:
        return int(sum(len(ep["actions"]) for ep in self.episodes))

    @property
    def obs_keys(self) -> list[str]:
        return list(self.episodes[0]["obs"]) if self.episodes else []


# --------------------------------------------------------------------------- writing
def _check_numeric(path, key: str, arr: np.ndarray) -> None:
    if arr.dtype.kind not in "biuf":
        raise DatasetFormatError(path, key, f"has dtype {arr.dtype}; expected a numeric (or bool) array")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        # the first row with any non-finite entry (not only rows that are entirely NaN/inf)
        rows = arr.reshape(arr.shape[0], -1)
        bad = ~np.isfinite(rows)
        row, column = (int(i) for i in np.argwhere(bad)[0])
        where = f"row {row}" + (f", entry {column} of that row" if bad.shape[1] > 1 else "")
        raise DatasetFormatError(path, key, f"contains NaN/inf (first at {where}: {rows[row, column]}; "
                                 f"{int(bad.sum())} non-finite value(s) in total)")


def _prepare_demo(path, i: int, demo: Mapping[str, Any], ref: dict | None) -> dict:
    """Validate one demo dict; returns arrays. ``ref`` holds the first demo's shapes."""
    name = f"data/demo_{i}"
    if not isinstance(demo, Mapping):
        raise DatasetFormatError(path, name, f"demo must be a dict, got {type(demo).__name__}")
    required = ("obs", "actions", "states", "rewards", "dones")
    missing = [k for k in required if k not in demo]
    if missing:
        raise DatasetFormatError(
            path, f"{name}/{missing[0]}", f"demo {i} is missing key(s) {missing}; it has {sorted(demo)}"
        )
    out: dict[str, Any] = {}
    shapes = {"actions": 2, "states": 2, "rewards": 1, "dones": 1}
    for k, ndim in shapes.items():
        arr = _to_numpy(demo[k])
        if k in ("rewards", "dones") and arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != ndim:
            want = "(T, A)" if k == "actions" else "(T, S)" if k == "states" else "(T,)"
            raise DatasetFormatError(path, f"{name}/{k}", f"has shape {arr.shape}; expected {want}")
        _check_numeric(path, f"{name}/{k}", arr)
        out[k] = arr
    for group in ("obs", "next_obs"):
        if group not in demo:
            continue
        obs = demo[group]
        if not isinstance(obs, Mapping) or not obs:
            raise DatasetFormatError(path, f"{name}/{group}", f"must be a non-empty dict of arrays, got {obs!r:.80}")
        arrays = {}
        for key, v in obs.items():
            arr = _to_numpy(v)
            if arr.ndim < 1:
                raise DatasetFormatError(path, f"{name}/{group}/{key}", f"has shape {arr.shape}; expected (T, ...)")
            _check_numeric(path, f"{name}/{group}/{key}", arr)
            arrays[str(key)] = arr
        out[group] = arrays
    if "next_obs" in out and set(out["next_obs"]) != set(out["obs"]):
        raise DatasetFormatError(
            path, f"{name}/next_obs",
            f"keys {sorted(out['next_obs'])} differ from obs keys {sorted(out['obs'])}",
        )
    # one length for everything
    t = out["actions"].shape[0]
    if t == 0:
        raise DatasetFormatError(path, f"{name}/actions", f"demo {i} is empty (0 steps)")
    leaves = [(k, out[k]) for k in shapes] + [
        (f"{g}/{k}", a) for g in ("obs", "next_obs") if g in out for k, a in out[g].items()
    ]
    for k, arr in leaves:
        if arr.shape[0] != t:
            raise DatasetFormatError(
                path, f"{name}/{k}", f"length mismatch: has shape {arr.shape} ({arr.shape[0]} steps) but "
                f"'actions' has {t} steps"
            )
    if "next_obs" in out:
        for k, arr in out["next_obs"].items():
            if arr.shape != out["obs"][k].shape:
                raise DatasetFormatError(path, f"{name}/next_obs/{k}",
                                         f"has shape {arr.shape} but obs/{k} has {out['obs'][k].shape}")
    # consistency with the first demo
    if ref is not None:
        if set(out["obs"]) != set(ref["obs"]):
            raise DatasetFormatError(
                path, f"{name}/obs",
                f"obs keys {sorted(out['obs'])} differ from demo 0's {sorted(ref['obs'])}",
            )
        checks = [(k, out[k].shape[1:], ref[k].shape[1:]) for k in ("actions", "states")]
        checks += [(f"obs/{k}", a.shape[1:], ref["obs"][k].shape[1:]) for k, a in out["obs"].items()]
        for k, got, want in checks:
            if got != want:
                raise DatasetFormatError(
                    path, f"{name}/{k}", f"has per-step shape {got} but demo 0 has {want}"
                )
    if demo.get("model_file") is not None:
        if not isinstance(demo["model_file"], str):
            raise DatasetFormatError(path, f"{name}.attrs/model_file", "must be a string (MJCF XML)")
        out["model_file"] = demo["model_file"]
    return out


def _is_image(arr: np.ndarray) -> bool:
    return arr.dtype == np.uint8 and arr.ndim >= 3


def write_robomimic_hdf5(
    path,
    demos: Sequence[Mapping[str, Any]],
    env_args: Mapping[str, Any],
    *,
    mask: Mapping[str, Sequence[int | str]] | None = None,
    compression: str | None = "gzip",
) -> None:
    """Write demonstrations as a robomimic-layout HDF5 file, atomically.

    Args:
        path: output file; replaced only after a complete write (a crash leaves any old file).
        demos: one dict per demo, written as ``data/demo_{i}``: ``obs`` ({key: (T, ...)}),
            ``actions`` (T, A), ``states`` (T, S), ``rewards`` (T,), ``dones`` (T,), optional
            ``next_obs`` (same keys/shapes as obs) and ``model_file`` (MJCF XML string, stored
            as the demo's attribute as robomimic does). Arrays (numpy or torch) keep their dtype;
            images should be uint8 (T, H, W, C).
        env_args: stored as JSON in ``data.attrs["env_args"]`` (robomimic expects keys
            ``env_name``, ``type``, ``env_kwargs``).
        mask: optional filter keys, e.g. ``{"train": [0, 1, 2], "valid": [3]}``: demo indices
            (or demo names) written as byte strings to ``mask/<name>``.
        compression: HDF5 filter for image arrays (uint8, ndim >= 3); None for none.

    Raises DatasetFormatError (naming demo, key and shape) before anything is written.
    """
    path = Path(path)
    demos = list(demos)
    if not demos:
        raise DatasetFormatError(path, "data", "no demos given")
    try:
        env_json = json.dumps(dict(env_args))
    except TypeError as e:
        raise DatasetFormatError(path, "data.attrs/env_args", f"is not JSON-serializable: {e}") from None
    prepared: list[dict] = []
    for i, demo in enumerate(demos):
        prepared.append(_prepare_demo(path, i, demo, prepared[0] if prepared else None))
    names = [f"demo_{i}" for i in range(len(prepared))]
    masks: dict[str, list[bytes]] = {}
    for mname, members in (mask or {}).items():
        sel = []
        for m in members:
            if isinstance(m, (str, bytes)):
                m = m.decode() if isinstance(m, bytes) else m
                if m not in names:
                    raise DatasetFormatError(path, f"mask/{mname}",
                                             f"names unknown demo {m!r}; demos are demo_0..demo_{len(names) - 1}")
                sel.append(m)
            else:
                j = int(m)
                if not 0 <= j < len(names):
                    raise DatasetFormatError(path, f"mask/{mname}", f"demo index {j} out of range [0, {len(names)})")
                sel.append(names[j])
        masks[str(mname)] = [s.encode("utf-8") for s in sel]

    total = 0
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        for name, demo in zip(names, prepared):
            g = data.create_group(name)
            t = int(demo["actions"].shape[0])
            total += t
            g.attrs["num_samples"] = t
            if "model_file" in demo:
                g.attrs["model_file"] = demo["model_file"]
            for k in ("actions", "states", "rewards", "dones"):
                g.create_dataset(k, data=demo[k])
            for group in ("obs", "next_obs"):
                if group not in demo:
                    continue
                og = g.create_group(group)
                for k, arr in demo[group].items():
                    comp = compression if (compression and _is_image(arr)) else None
                    og.create_dataset(k, data=arr, compression=comp)
        data.attrs["total"] = total
        data.attrs["env_args"] = env_json
        if masks:
            mg = f.create_group("mask")
            for mname, members in masks.items():
                mg.create_dataset(mname, data=np.array(members, dtype="S"))


# --------------------------------------------------------------------------- reading
def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetFormatError(path, None, "is a directory, expected a robomimic .hdf5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetFormatError(path, None, f"cannot be opened as HDF5 ({e})") from None


def _dataset(path, group: h5py.Group, key: str, where: str) -> h5py.Dataset:
    if key not in group:
        raise DatasetFormatError(
            path, f"{where}/{key}", f"missing; keys found in '{where}': {sorted(group.keys())}"
        )
    item = group[key]
    if not isinstance(item, h5py.Dataset):
        raise DatasetFormatError(path, f"{where}/{key}", f"is an HDF5 {type(item).__name__}, expected a dataset")
    if item.dtype.kind not in "biuf":
        raise DatasetFormatError(path, f"{where}/{key}", f"has dtype {item.dtype}; expected numeric")
    if item.ndim < 1:
        raise DatasetFormatError(path, f"{where}/{key}", "is a scalar; expected (T, ...)")
    return item


def _read_mask(path, f: h5py.File, filter_key: str, demos: list[str]) -> list[str]:
    available = sorted(f["mask"].keys()) if "mask" in f and isinstance(f["mask"], h5py.Group) else []
    if filter_key not in available:
        raise DatasetFormatError(
            path, f"mask/{filter_key}",
            f"unknown filter key {filter_key!r}; available filter keys: {available}"
            + ("" if available else " (the file has no 'mask' group)"),
        )
    raw = f["mask"][filter_key][()]
    raw = np.atleast_1d(raw)
    names = [_decode(v) for v in raw.tolist()]
    unknown = [n for n in names if n not in demos]
    if unknown:
        raise DatasetFormatError(path, f"mask/{filter_key}", f"lists demos not in 'data': {unknown[:5]}")
    return robomimic_demo_names(set(names))


def read_robomimic_hdf5(
    path,
    obs_keys: Sequence[str] | None = None,
    filter_key: str | None = None,
    *,
    load_next_obs: bool = False,
) -> RobomimicData:
    """Read a robomimic HDF5 file (opened read-only).

    Args:
        obs_keys: observation keys to load (all keys of the first demo when None). Every
            selected demo must have them.
        filter_key: only load the demos listed in ``mask/<filter_key>`` (e.g. "train").
        load_next_obs: also load ``next_obs/<key>`` (can double the memory for images).

    Returns a :class:`RobomimicData`. Images come back as stored (uint8 (T, H, W, C)).
    """
    path = Path(path)
    with _open(path) as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise DatasetFormatError(path, "data", f"missing group 'data'; top-level keys: {sorted(f.keys())}")
        data = f["data"]
        env_args: dict = {}
        if "env_args" in data.attrs:
            raw = _decode(data.attrs["env_args"])
            try:
                env_args = json.loads(raw) if isinstance(raw, str) else dict(raw)
            except (ValueError, TypeError) as e:
                raise DatasetFormatError(path, "data.attrs/env_args", f"is not valid JSON ({e})") from None
        demos = robomimic_demo_names(k for k, v in data.items() if isinstance(v, h5py.Group))
        if not demos:
            raise DatasetFormatError(path, "data", f"has no demo groups; keys found in 'data': {sorted(data.keys())}")
        if filter_key is not None:
            demos = _read_mask(path, f, filter_key, demos)
        filter_keys = sorted(f["mask"].keys()) if "mask" in f and isinstance(f["mask"], h5py.Group) else []
        episodes = []
        keys = None if obs_keys is None else [str(k) for k in obs_keys]
        for name in demos:
            where = f"data/{name}"
            g = data[name]
            if "obs" not in g or not isinstance(g["obs"], h5py.Group):
                raise DatasetFormatError(path, f"{where}/obs",
                                         f"missing group 'obs'; keys found in '{where}': {sorted(g.keys())}")
            og = g["obs"]
            if keys is None:
                keys = sorted(og.keys())
            for k in keys:
                if k not in og:
                    raise DatasetFormatError(
                        path, f"{where}/obs/{k}", f"missing obs key {k!r}; obs keys available: {sorted(og.keys())}"
                    )
            ep: dict[str, Any] = {"obs": {k: _dataset(path, og, k, f"{where}/obs")[()] for k in keys}}
            for k in ("actions", "rewards", "dones"):
                ep[k] = _dataset(path, g, k, where)[()]
            if "states" in g:
                ep["states"] = _dataset(path, g, "states", where)[()]
            if load_next_obs:
                if "next_obs" not in g:
                    raise DatasetFormatError(path, f"{where}/next_obs", f"missing (load_next_obs=True); keys "
                                             f"found in '{where}': {sorted(g.keys())}")
                ep["next_obs"] = {k: _dataset(path, g["next_obs"], k, f"{where}/next_obs")[()] for k in keys}
            # shapes and lengths
            acts = ep["actions"]
            if acts.ndim == 1:
                ep["actions"] = acts = acts[:, None]
            if acts.ndim != 2:
                raise DatasetFormatError(path, f"{where}/actions", f"has shape {acts.shape}; expected (T, A)")
            for k in ("rewards", "dones"):
                if ep[k].ndim == 2 and ep[k].shape[1] == 1:
                    ep[k] = ep[k][:, 0]
                if ep[k].ndim != 1:
                    raise DatasetFormatError(path, f"{where}/{k}", f"has shape {ep[k].shape}; expected (T,)")
            t = acts.shape[0]
            leaves = [(k, ep[k]) for k in ("rewards", "dones", "states") if k in ep]
            leaves += [(f"{grp}/{k}", a) for grp in ("obs", "next_obs") if grp in ep for k, a in ep[grp].items()]
            for k, arr in leaves:
                if arr.shape[0] != t:
                    raise DatasetFormatError(
                        path, f"{where}/{k}",
                        f"length mismatch: {arr.shape[0]} steps (shape {arr.shape}) but '{where}/actions' has {t}",
                    )
            if "num_samples" in g.attrs and int(g.attrs["num_samples"]) != t:
                raise DatasetFormatError(
                    path, f"{where}.attrs/num_samples", f"is {int(g.attrs['num_samples'])} but the demo has {t} steps"
                )
            if "model_file" in g.attrs:
                ep["model_file"] = _decode(g.attrs["model_file"])
            episodes.append(ep)
    return RobomimicData(episodes=episodes, env_args=env_args, demo_names=list(demos),
                         filter_keys=filter_keys, path=str(path))
