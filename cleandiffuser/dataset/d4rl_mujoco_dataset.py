"""Torch datasets for D4RL-style MuJoCo locomotion data.

* :class:`D4RLMuJoCoTDDataset` - single transitions for TD / Q-learning methods
  (IDQL, DQL, EDP, ...), built from a qlearning dict.
* :class:`D4RLMuJoCoDataset` - fixed-horizon windows for sequence models (Diffuser,
  Decision Diffuser, ...), built from a list of episodes.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .normalizers import GaussianNormalizer

__all__ = ["D4RLMuJoCoTDDataset", "D4RLMuJoCoDataset", "iql_reward_scale", "split_trajectories_iql"]


def split_trajectories_iql(observations: np.ndarray, next_observations: np.ndarray, terminals: np.ndarray) -> np.ndarray:
    """Episode-end mask as IQL computes it: a transition ends an episode when it is
    terminal, when the next row does not start where this one ended
    (``|obs[i+1] - next_obs[i]| > 1e-6``), or when it is the last row."""
    n = observations.shape[0]
    done = np.asarray(terminals).reshape(n).astype(bool).copy()
    if n > 1:
        gap = np.linalg.norm(observations[1:] - next_observations[:-1], axis=-1) > 1e-6
        done[:-1] |= gap
    done[-1] = True
    return done


def iql_reward_scale(dataset: Mapping[str, np.ndarray]) -> float:
    """``1000 / (max episode return - min episode return)`` (IQL's MuJoCo reward
    normalization), episodes split by :func:`split_trajectories_iql`."""
    rewards = np.asarray(dataset["rewards"], dtype=np.float64).reshape(-1)
    done = split_trajectories_iql(np.asarray(dataset["observations"]), np.asarray(dataset["next_observations"]),
                                  np.asarray(dataset["terminals"]))
    starts = np.concatenate([[0], np.flatnonzero(done)[:-1] + 1])
    returns = np.add.reduceat(rewards, starts)
    spread = float(returns.max() - returns.min())
    if spread < 1e-8:
        warnings.warn("iql_reward_scale: all episode returns are equal; rewards are left unscaled")
        return 1.0
    return 1000.0 / spread


class D4RLMuJoCoTDDataset(Dataset):
    """Transitions ``{"obs": {"state"}, "next_obs": {"state"}, "act", "rew", "tml"}``.

    Observations and next observations are normalized with a GaussianNormalizer fitted on
    ``observations``; actions are kept raw; ``rew`` and ``tml`` have shape (1,). With
    ``normalize_reward=True`` rewards are multiplied by :func:`iql_reward_scale`
    (stored as ``reward_scale``; 1.0 otherwise). All items are float32 tensors.

    ``tensors()`` returns the whole data in the same nested layout (shape (N, ...)),
    ready for :class:`~cleandiffuser.dataset.dataset_utils.TensorBatchSampler`.
    """

    def __init__(self, dataset: Mapping[str, np.ndarray], normalize_reward: bool = False):
        super().__init__()
        obs = np.asarray(dataset["observations"], dtype=np.float32)
        next_obs = np.asarray(dataset["next_observations"], dtype=np.float32)
        act = np.asarray(dataset["actions"], dtype=np.float32)
        n = obs.shape[0]
        rew = np.asarray(dataset["rewards"], dtype=np.float32).reshape(n, 1)
        tml = np.asarray(dataset["terminals"], dtype=np.float32).reshape(n, 1)
        if not (next_obs.shape == obs.shape and act.shape[0] == n):
            raise ValueError(
                f"inconsistent qlearning dict: observations {obs.shape}, next_observations {next_obs.shape}, "
                f"actions {act.shape}"
            )
        self.reward_scale = iql_reward_scale(dataset) if normalize_reward else 1.0
        rew = rew * np.float32(self.reward_scale)

        self.normalizers = {"state": GaussianNormalizer(obs)}
        normalizer = self.normalizers["state"]
        self.obs = torch.from_numpy(np.ascontiguousarray(normalizer.normalize(obs), dtype=np.float32))
        self.next_obs = torch.from_numpy(np.ascontiguousarray(normalizer.normalize(next_obs), dtype=np.float32))
        self.act = torch.from_numpy(np.ascontiguousarray(act.reshape(n, -1)))
        self.rew = torch.from_numpy(np.ascontiguousarray(rew))
        self.tml = torch.from_numpy(np.ascontiguousarray(tml))
        self.size = n
        self.o_dim = obs.shape[-1]
        self.a_dim = self.act.shape[-1]

    def get_normalizer(self) -> GaussianNormalizer:
        return self.normalizers["state"]

    def tensors(self) -> dict:
        return {"obs": {"state": self.obs}, "next_obs": {"state": self.next_obs},
                "act": self.act, "rew": self.rew, "tml": self.tml}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict:
        return {"obs": {"state": self.obs[idx]}, "next_obs": {"state": self.next_obs[idx]},
                "act": self.act[idx], "rew": self.rew[idx], "tml": self.tml[idx]}


class D4RLMuJoCoDataset(Dataset):
    """Diffuser-style horizon windows over episodes.

    Each episode (dicts with ``observations``, ``actions``, ``rewards`` and optional
    ``terminals``/``timeouts``, e.g. from :func:`cleandiffuser.dataset.load_episodes`) is
    zero-padded to ``max_path_length`` steps (observations are normalized first, so the
    padding is the mean observation). An episode that ends in a true terminal (last
    step terminal and not a timeout) has its last reward replaced by
    ``terminal_penalty`` (None keeps it). Windows start at every step
    ``0 .. min(T - 1, max_path_length - horizon)`` of an episode of length T.

    Items: ``{"obs": {"state": (H, o)}, "act": (H, a), "rew": (H, 1), "val": (1,)}``
    where ``val`` is the discounted return-to-go from the window start,
    ``sum_k discount**k * rew[start + k]`` over the (padded) rest of the episode.
    """

    def __init__(self, episodes: Sequence[Mapping[str, np.ndarray]], horizon: int = 64, discount: float = 0.99,
                 terminal_penalty: float | None = -100, max_path_length: int = 1000):
        super().__init__()
        if len(episodes) == 0:
            raise ValueError("D4RLMuJoCoDataset: no episodes")
        if horizon > max_path_length:
            raise ValueError(f"horizon ({horizon}) exceeds max_path_length ({max_path_length})")
        lengths = [len(ep["rewards"]) for ep in episodes]
        too_long = [i for i, t in enumerate(lengths) if t > max_path_length]
        if too_long:
            raise ValueError(f"episode {too_long[0]} has {lengths[too_long[0]]} steps > max_path_length={max_path_length}")
        all_obs = np.concatenate([np.asarray(ep["observations"], dtype=np.float32) for ep in episodes], axis=0)
        self.normalizers = {"state": GaussianNormalizer(all_obs)}
        self.o_dim = all_obs.shape[-1]
        self.a_dim = int(np.asarray(episodes[0]["actions"]).reshape(lengths[0], -1).shape[-1])
        self.horizon, self.discount, self.max_path_length = horizon, discount, max_path_length

        n_paths = len(episodes)
        seq_obs = np.zeros((n_paths, max_path_length, self.o_dim), dtype=np.float32)
        seq_act = np.zeros((n_paths, max_path_length, self.a_dim), dtype=np.float32)
        seq_rew = np.zeros((n_paths, max_path_length, 1), dtype=np.float64)
        indices = []
        for p, (ep, t) in enumerate(zip(episodes, lengths)):
            if t == 0:
                continue
            seq_obs[p, :t] = self.normalizers["state"].normalize(np.asarray(ep["observations"], dtype=np.float32))
            seq_act[p, :t] = np.asarray(ep["actions"], dtype=np.float32).reshape(t, -1)
            rew = np.asarray(ep["rewards"], dtype=np.float64).reshape(t).copy()
            term = bool(np.asarray(ep.get("terminals", np.zeros(t)))[-1])
            timeout = bool(np.asarray(ep.get("timeouts", np.zeros(t)))[-1])
            if terminal_penalty is not None and term and not timeout:
                rew[-1] = terminal_penalty
            seq_rew[p, :t, 0] = rew
            max_start = min(t - 1, max_path_length - horizon)
            indices.extend((p, s) for s in range(max_start + 1))
        # discounted return-to-go, backwards over the padded paths
        seq_val = np.copy(seq_rew)
        for i in range(max_path_length - 2, -1, -1):
            seq_val[:, i] += discount * seq_val[:, i + 1]
        self.seq_obs = torch.from_numpy(seq_obs)
        self.seq_act = torch.from_numpy(seq_act)
        self.seq_rew = torch.from_numpy(seq_rew.astype(np.float32))
        self.seq_val = torch.from_numpy(seq_val.astype(np.float32))
        self.path_lengths = np.asarray(lengths)
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1, 2)
        self.size = len(self.indices)

    def get_normalizer(self) -> GaussianNormalizer:
        return self.normalizers["state"]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict:
        p, s = (int(v) for v in self.indices[idx])
        e = s + self.horizon
        return {"obs": {"state": self.seq_obs[p, s:e]}, "act": self.seq_act[p, s:e],
                "rew": self.seq_rew[p, s:e], "val": self.seq_val[p, s]}
