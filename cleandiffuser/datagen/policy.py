"""SAC actor snapshots (safetensors, actor weights only) and a numpy copy of the actor
for fast, torch-free rollouts.

A snapshot file holds the MLP weights ``net.{i}.weight / net.{i}.bias`` (torch Linear
layout) and string metadata: ``format``, ``obs_dim``, ``act_dim``, ``hidden`` (JSON
list), ``log_std_min``, ``log_std_max``, ``action_low`` / ``action_high`` (JSON lists),
``env_id`` and ``env_steps``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from ..serialization import atomic_path

__all__ = ["SNAPSHOT_FORMAT", "NumpyActor", "load_actor_snapshot", "save_actor_snapshot", "file_sha256", "same_snapshot"]

SNAPSHOT_FORMAT = "cleandiffuser-sac-actor-v1"


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def same_snapshot(a, b) -> bool:
    """Whether two safetensors files hold the same tensors and metadata. Not a byte comparison: safetensors writes
    its metadata in hash-map order, so two saves of the same weights can differ byte for byte."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(a), "np") as fa, safe_open(str(b), "np") as fb:
        if fa.metadata() != fb.metadata():
            return False
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and np.array_equal(ta[k], tb[k]) for k in ta)


def atomic_save_safetensors(tensors: Mapping, path, metadata: Mapping[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` through a temporary file renamed into place."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=dict(metadata or {}))
    return Path(path)


def save_actor_snapshot(actor, path, env_id: str, env_steps: int, action_low, action_high) -> Path:
    """Save the weights of a :class:`cleandiffuser.datagen.sac.Actor` (atomically)."""
    meta = {
        "format": SNAPSHOT_FORMAT,
        "obs_dim": str(actor.obs_dim),
        "act_dim": str(actor.act_dim),
        "hidden": json.dumps(list(actor.hidden)),
        "log_std_min": repr(float(actor.log_std_min)),
        "log_std_max": repr(float(actor.log_std_max)),
        "action_low": json.dumps([float(x) for x in np.asarray(action_low).ravel()]),
        "action_high": json.dumps([float(x) for x in np.asarray(action_high).ravel()]),
        "env_id": str(env_id),
        "env_steps": str(int(env_steps)),
    }
    return atomic_save_safetensors(actor.state_dict(), path, meta)


class NumpyActor:
    """Tanh-Gaussian MLP policy evaluated in numpy (float32).

    ``act(obs, rng)`` samples ``tanh(mu + std * eps)`` with ``eps ~ rng.standard_normal``
    (as D4RL's stochastic data collection); ``act(obs)`` without an rng returns the
    deterministic ``tanh(mu)``. Actions are rescaled from [-1, 1] to the action bounds.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], meta: Mapping[str, str]):
        if meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a {SNAPSHOT_FORMAT} snapshot (format={meta.get('format')!r})")
        self.meta = dict(meta)
        self.obs_dim = int(meta["obs_dim"])
        self.act_dim = int(meta["act_dim"])
        self.log_std_min = float(meta["log_std_min"])
        self.log_std_max = float(meta["log_std_max"])
        self.low = np.asarray(json.loads(meta["action_low"]), dtype=np.float32)
        self.high = np.asarray(json.loads(meta["action_high"]), dtype=np.float32)
        self._unit_box = bool(np.all(self.low == -1.0) and np.all(self.high == 1.0))
        idx = sorted({int(k.split(".")[1]) for k in weights if k.startswith("net.")})
        self.layers = [
            (np.ascontiguousarray(np.asarray(weights[f"net.{i}.weight"], dtype=np.float32).T),
             np.asarray(weights[f"net.{i}.bias"], dtype=np.float32))
            for i in idx
        ]
        if self.layers[0][0].shape[0] != self.obs_dim or self.layers[-1][0].shape[1] != 2 * self.act_dim:
            raise ValueError("snapshot weights do not match its obs_dim/act_dim metadata")

    def mean_log_std(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(obs, dtype=np.float32)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                np.maximum(x, 0.0, out=x)
        mu, log_std = x[..., : self.act_dim], x[..., self.act_dim:]
        return mu, np.clip(log_std, self.log_std_min, self.log_std_max)

    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        mu, log_std = self.mean_log_std(obs)
        if rng is None:
            u = mu
        else:
            u = mu + np.exp(log_std) * rng.standard_normal(mu.shape).astype(np.float32)
        a = np.tanh(u).astype(np.float32, copy=False)
        if self._unit_box:
            return a
        return (self.low + (a + 1.0) * 0.5 * (self.high - self.low)).astype(np.float32)


def load_actor_snapshot(path) -> NumpyActor:
    """Load a snapshot file (safetensors, no pickle) as a :class:`NumpyActor`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such policy snapshot")
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        weights = {k: f.get_tensor(k) for k in f.keys()}
    return NumpyActor(weights, meta)
