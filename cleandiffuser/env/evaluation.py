"""Evaluation harness for offline-RL policies on vectorized gymnasium MuJoCo environments.

:func:`evaluate` runs ``n_envs`` environments side by side and calls the policy once per
vector step on the whole batch of (normalized) observations. For every seed it counts
exactly ``n_episodes`` finished episodes and reports per-episode returns, lengths and D4RL
normalized scores (CSV + JSON summary when ``out_dir`` is given).

Episode seeding. Episode ``k`` (0-based, in the order episodes are *started*) of seed ``s``
begins with ``env.reset(seed=episode_seed(s, k))`` = ``s * 1_000_000 + k``, whichever
sub-environment runs it. The vector env is built with autoreset disabled and the harness
resets finished sub-environments itself (``reset_mask``), so there is no gymnasium 1.x
next-step-autoreset step to skip, and an episode's trajectory depends only on its reset
seed and the policy: for a deterministic policy the per-episode results do not depend on
``n_envs`` or on sync/async vectorization. Episode slots are handed out at reset time, so
the counted episodes are the first ``n_episodes`` started (not the first finished, which
would favour short episodes); sub-environments with no slot left keep stepping (their
results are ignored) until the last counted episode ends.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["EvalResult", "evaluate", "episode_seed", "EPISODE_SEED_STRIDE", "mean_se"]

#: reset seed of episode ``k`` of seed ``s`` is ``s * EPISODE_SEED_STRIDE + k``
EPISODE_SEED_STRIDE = 1_000_000

CSV_NAME = "episodes.csv"
SUMMARY_NAME = "summary.json"
CSV_COLUMNS = ("seed", "env_index", "episode", "reset_seed", "return", "length", "terminated", "normalized_score")


def episode_seed(seed: int, episode: int) -> int:
    """Reset seed of episode ``episode`` (0-based, in start order) under evaluation seed ``seed``."""
    return int(seed) * EPISODE_SEED_STRIDE + int(episode)


def mean_se(x) -> tuple[float, float]:
    """``(mean, standard error)`` with SE = sample std (ddof=1) / sqrt(n); SE is NaN for n < 2."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return math.nan, math.nan
    se = float(np.std(x, ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(np.mean(x)), se


def _stats(x) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64).ravel()
    m, se = mean_se(x)
    return {
        "mean": m,
        "se": se,
        "std": float(np.std(x, ddof=1)) if x.size > 1 else math.nan,
        "min": float(np.min(x)) if x.size else math.nan,
        "max": float(np.max(x)) if x.size else math.nan,
    }


def _json_safe(obj):
    """NaN/inf -> None, numpy scalars/arrays -> Python types (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__}
    for name in ("gymnasium", "mujoco", "torch", "cleandiffuser"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "unknown"))
        except Exception:  # pragma: no cover - optional packages
            out[name] = "not installed"
    return out


# --------------------------------------------------------------------------- result
@dataclass
class EvalResult:
    """Per-episode results of :func:`evaluate`, one entry per counted episode, ordered by
    seed (in the order given) then episode index."""

    env_id: str
    seeds: tuple[int, ...]
    n_episodes: int  # per seed
    returns: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray  # D4RL normalized scores (NaN when no reference exists)
    terminated: np.ndarray  # True: terminated, False: truncated by the time limit
    seed: np.ndarray  # evaluation seed of each episode
    episode: np.ndarray  # episode index within its seed (start order)
    env_index: np.ndarray  # sub-environment that ran it
    reset_seed: np.ndarray  # seed passed to env.reset
    dataset_name: str | None = None
    n_envs: int = 1
    vectorization: str = "sync"
    max_episode_steps: int = 1000
    wall_time: float = math.nan
    env_steps: int = 0  # all sub-environment steps simulated (idle ones included)
    policy_calls: int = 0
    versions: dict = field(default_factory=dict)
    video_path: str | None = None
    video_backend: str | None = None  # MUJOCO_GL backend that rendered the video
    out_dir: str | None = None

    @property
    def has_scores(self) -> bool:
        return bool(np.all(np.isfinite(self.scores))) and self.scores.size > 0

    def per_seed(self, values) -> np.ndarray:
        """Mean of ``values`` (an array aligned with the episodes) for each seed, in seed order."""
        values = np.asarray(values, dtype=np.float64)
        return np.array([values[self.seed == s].mean() for s in self.seeds])

    def summary(self) -> dict[str, Any]:
        n = int(self.returns.size)
        ret = _stats(self.returns)
        score = _stats(self.scores) if self.has_scores else None
        seed_ret = self.per_seed(self.returns)
        m, se = mean_se(seed_ret)
        per_seed: dict[str, Any] = {"return_means": seed_ret.tolist(), "return": {"mean": m, "se": se}}
        if score is not None:
            seed_score = self.per_seed(self.scores)
            m, se = mean_se(seed_score)
            per_seed.update(normalized_score_means=seed_score.tolist(), normalized_score={"mean": m, "se": se})
        episode_steps = int(self.lengths.sum())
        wall = float(self.wall_time)
        rate = lambda k: k / wall if wall > 0 else math.nan  # noqa: E731
        return {
            "env_id": self.env_id,
            "dataset_name": self.dataset_name,
            "n_episodes": n,
            "n_episodes_per_seed": int(self.n_episodes),
            "seeds": [int(s) for s in self.seeds],
            "n_seeds": len(self.seeds),
            "return": ret,
            "normalized_score": score,
            "per_seed": per_seed,
            "length": {"mean": float(self.lengths.mean()) if n else math.nan,
                       "min": int(self.lengths.min()) if n else None,
                       "max": int(self.lengths.max()) if n else None},
            "terminated_fraction": float(self.terminated.mean()) if n else math.nan,
            "se_definition": "sample std (ddof=1) / sqrt(n); per_seed: over the per-seed means",
            "episode_seed_rule": f"env.reset(seed=seed * {EPISODE_SEED_STRIDE} + episode)",
            "n_envs": int(self.n_envs),
            "vectorization": self.vectorization,
            "max_episode_steps": int(self.max_episode_steps),
            "wall_time_s": wall,
            "episode_steps": episode_steps,
            "steps_per_s": rate(episode_steps),
            "env_steps": int(self.env_steps),
            "env_steps_per_s": rate(self.env_steps),
            "policy_calls": int(self.policy_calls),
            "video": self.video_path,
            "video_backend": self.video_backend,
            "versions": dict(self.versions),
        }

    def format(self) -> str:
        """One line, e.g. ``normalized score 45.3 ± 0.8 (30 episodes, 3 seeds)``."""
        name, values = ("normalized score", self.scores) if self.has_scores else ("return", self.returns)
        m, se = mean_se(values)
        se_txt = f"{se:.1f}" if math.isfinite(se) else "n/a"
        k = len(self.seeds)
        return f"{name} {m:.1f} ± {se_txt} ({self.returns.size} episodes, {k} seed{'s' if k != 1 else ''})"

    def __str__(self) -> str:
        return self.format()

    def save(self, out_dir) -> tuple[Path, Path]:
        """Write ``episodes.csv`` (one row per episode) and ``summary.json`` to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = out / CSV_NAME, out / SUMMARY_NAME
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for i in range(self.returns.size):
                w.writerow([int(self.seed[i]), int(self.env_index[i]), int(self.episode[i]), int(self.reset_seed[i]),
                            repr(float(self.returns[i])), int(self.lengths[i]), int(bool(self.terminated[i])),
                            repr(float(self.scores[i])) if math.isfinite(self.scores[i]) else ""])
        with open(json_path, "w") as f:
            json.dump(_json_safe(self.summary()), f, indent=2, allow_nan=False)
            f.write("\n")
        return csv_path, json_path


# --------------------------------------------------------------------------- evaluation
def _make_sub_env(env_id: str, max_episode_steps: int, env_kwargs: dict):
    from cleandiffuser.env import make_env

    return make_env(env_id, seed=None, max_episode_steps=max_episode_steps, **env_kwargs)


def _to_numpy_actions(a, n: int, act_dim: int) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.size != n * act_dim:
        raise ValueError(f"policy returned actions of shape {a.shape}; expected ({n}, {act_dim})")
    a = a.reshape(n, act_dim)
    if not np.all(np.isfinite(a)):
        raise ValueError("policy returned non-finite actions")
    return a


def evaluate(
    policy: Callable[[np.ndarray], Any],
    env_id: str,
    n_envs: int = 10,
    n_episodes: int = 10,
    seeds: int | Sequence[int] = (0,),
    obs_normalizer=None,
    max_episode_steps: int = 1000,
    out_dir: str | os.PathLike | None = None,
    video: bool = False,
    dataset_name: str | None = None,
    *,
    vectorization: str = "sync",
    clip_actions: bool = True,
    obs_dtype=np.float32,
    seed_policy: bool = True,
    progress: bool = True,
    video_size: tuple[int, int] = (256, 256),
    env_kwargs: dict | None = None,
) -> EvalResult:
    """Evaluate ``policy`` for ``n_episodes`` episodes per seed on ``n_envs`` vectorized envs.

    Args:
        policy: ``policy(obs) -> actions``, called once per vector step with the observations
            of all sub-environments, ``obs`` an ``(N, obs_dim)`` array of dtype ``obs_dtype``
            normalized by ``obs_normalizer``; returns ``(N, act_dim)`` (numpy or torch). Called
            under ``torch.no_grad()``. Sub-environments whose episode is not counted (idle at the
            end of a seed) are still in the batch.
        env_id: gymnasium id (``HalfCheetah-v5``) or family/dataset name (``halfcheetah``).
        n_envs: sub-environments (capped at ``n_episodes``).
        n_episodes: episodes counted per seed (exactly).
        seeds: evaluation seeds; episode ``k`` of seed ``s`` is reset with ``episode_seed(s, k)``.
        obs_normalizer: object with ``.normalize(np_array)`` (e.g. the dataset's
            ``GaussianNormalizer``) or a callable; ``None`` for raw observations.
        max_episode_steps: time limit (truncation).
        out_dir: where ``episodes.csv``, ``summary.json`` and the video go (nothing written if None).
        video: render the first episode of env 0 under the first seed (``out_dir/video.mp4`` when
            imageio's ffmpeg plugin is available, else ``video.npz`` of uint8 frames). Rendering is
            an offscreen replay of the recorded actions in a subprocess (``MUJOCO_GL`` = the
            user's setting, then ``egl``, then ``osmesa``); on failure a warning is issued and the
            evaluation result is still returned.
        dataset_name: name used for the D4RL normalized score (default: ``env_id``).
        vectorization: ``"sync"`` (default; fastest on few cores) or ``"async"`` (subprocesses).
        clip_actions: clip actions to the action space bounds.
        obs_dtype: dtype of the observations passed to the policy (None: keep float64).
        seed_policy: call ``cleandiffuser.utils.seed.set_seed(seed)`` (python/numpy/torch
            global RNGs) before each seed, so stochastic policies are reproducible.
        progress: show a tqdm progress bar (episodes done).
        video_size: ``(width, height)`` of the rendered frames.
        env_kwargs: extra keyword arguments for ``gymnasium.make``.
    """
    import gymnasium as gym
    from tqdm.auto import tqdm

    from cleandiffuser.env import ENV_IDS, env_id_for, normalized_score, require_mujoco

    env_id = env_id_for(env_id)
    if env_id in ENV_IDS.values():  # a MuJoCo task: fail early and clearly on a broken mujoco
        require_mujoco()
    seeds = (int(seeds),) if np.isscalar(seeds) else tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"duplicate seeds {seeds}: they would repeat the same episodes")
    if min(seeds) < 0:
        raise ValueError("seeds must be non-negative")
    n_episodes = int(n_episodes)
    if not 0 < n_episodes < EPISODE_SEED_STRIDE:
        raise ValueError(f"n_episodes must be in [1, {EPISODE_SEED_STRIDE})")
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    n = max(1, min(int(n_envs), n_episodes))
    if obs_normalizer is None:
        normalize = None
    elif hasattr(obs_normalizer, "normalize"):
        normalize = obs_normalizer.normalize
    elif callable(obs_normalizer):
        normalize = obs_normalizer
    else:
        raise TypeError("obs_normalizer needs a .normalize method or must be callable")
    try:
        import torch

        no_grad = torch.no_grad
    except ImportError:  # pragma: no cover - torch is a dependency
        import contextlib

        no_grad = contextlib.nullcontext
    if seed_policy:
        from cleandiffuser.utils.seed import set_seed

    fns = [functools.partial(_make_sub_env, env_id, int(max_episode_steps), dict(env_kwargs or {})) for _ in range(n)]
    vec_cls = gym.vector.SyncVectorEnv if vectorization == "sync" else gym.vector.AsyncVectorEnv
    envs = vec_cls(fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    act_space = envs.single_action_space
    act_dim = int(np.prod(act_space.shape))
    low, high = (np.broadcast_to(act_space.low, (n, act_dim)), np.broadcast_to(act_space.high, (n, act_dim)))

    rows: list[tuple] = []  # (seed, env_index, episode, reset_seed, return, length, terminated)
    video_actions: list[np.ndarray] = []
    record_video = bool(video)
    env_steps = policy_calls = 0
    pbar = tqdm(total=n_episodes * len(seeds), desc=f"eval {env_id}", unit="ep", disable=not progress,
                dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for si, seed in enumerate(seeds):
            if seed_policy:
                set_seed(seed)
            pbar.set_postfix(seed=seed)
            slot = np.arange(n)  # episode index each sub-env runs; -1: idle (not counted)
            next_episode = n
            reset_seeds: list[int | None] = [episode_seed(seed, k) for k in range(n)]
            obs, _ = envs.reset(seed=reset_seeds)
            ep_ret = np.zeros(n, dtype=np.float64)
            ep_len = np.zeros(n, dtype=np.int64)
            done_count = 0
            while done_count < n_episodes:
                x = obs if normalize is None else normalize(obs)
                x = np.asarray(x, dtype=obs_dtype) if obs_dtype is not None else np.asarray(x)
                with no_grad():
                    act = policy(x)
                policy_calls += 1
                act = _to_numpy_actions(act, n, act_dim)
                if clip_actions:
                    act = np.clip(act, low, high)
                act = act.reshape((n,) + act_space.shape).astype(act_space.dtype, copy=False)
                if record_video and si == 0 and slot[0] == 0:
                    video_actions.append(act[0].copy())
                obs, rew, term, trunc, _ = envs.step(act)
                env_steps += n
                ep_ret += rew
                ep_len += 1
                done = np.logical_or(term, trunc)
                if not done.any():
                    continue
                for i in np.flatnonzero(done):
                    if slot[i] >= 0:
                        rows.append((seed, int(i), int(slot[i]), episode_seed(seed, slot[i]), float(ep_ret[i]),
                                     int(ep_len[i]), bool(term[i])))
                        done_count += 1
                        pbar.update(1)
                    if next_episode < n_episodes:
                        slot[i], reset_seeds[i] = next_episode, episode_seed(seed, next_episode)
                        next_episode += 1
                    else:
                        slot[i], reset_seeds[i] = -1, None
                    ep_ret[i], ep_len[i] = 0.0, 0
                if done_count < n_episodes:
                    obs, _ = envs.reset(seed=list(reset_seeds), options={"reset_mask": done.copy()})
        wall = time.perf_counter() - t0
    finally:
        pbar.close()
        envs.close()

    order = {s: i for i, s in enumerate(seeds)}
    rows.sort(key=lambda r: (order[r[0]], r[2]))
    col = lambda j, dt: np.array([r[j] for r in rows], dtype=dt)  # noqa: E731
    returns = col(4, np.float64)
    try:
        scores = np.asarray(normalized_score(dataset_name or env_id, returns), dtype=np.float64)
    except KeyError:
        warnings.warn(f"no D4RL reference scores for {dataset_name or env_id!r}; normalized scores are NaN")
        scores = np.full_like(returns, np.nan)
    result = EvalResult(
        env_id=env_id, seeds=seeds, n_episodes=n_episodes, returns=returns, lengths=col(5, np.int64),
        scores=scores, terminated=col(6, bool), seed=col(0, np.int64), episode=col(2, np.int64),
        env_index=col(1, np.int64), reset_seed=col(3, np.int64), dataset_name=dataset_name, n_envs=n,
        vectorization=vectorization, max_episode_steps=int(max_episode_steps), wall_time=wall,
        env_steps=env_steps, policy_calls=policy_calls, versions=_versions(),
        out_dir=None if out_dir is None else str(out_dir),
    )
    if video:
        if out_dir is None:
            warnings.warn("video=True needs out_dir; no video written")
        else:
            first = int(np.flatnonzero((result.seed == seeds[0]) & (result.episode == 0))[0])
            result.video_path, result.video_backend = render_replay(
                env_id, episode_seed(seeds[0], 0), np.asarray(video_actions), Path(out_dir) / "video",
                max_episode_steps=max_episode_steps, size=video_size, env_kwargs=env_kwargs,
                expected_return=float(result.returns[first]),
            )
    if out_dir is not None:
        result.save(out_dir)
    return result


# --------------------------------------------------------------------------- video
def render_replay(env_id: str, reset_seed: int, actions: np.ndarray, path_stem, *, max_episode_steps: int = 1000,
                  size: tuple[int, int] = (256, 256), env_kwargs: dict | None = None,
                  expected_return: float | None = None,
                  timeout: float = 900.0) -> tuple[str | None, str | None]:
    """Render an episode offscreen by replaying ``actions`` from ``env.reset(seed=reset_seed)``
    (MuJoCo is deterministic), in a subprocess per ``MUJOCO_GL`` backend so a missing GL
    library cannot crash the caller. Writes ``<path_stem>.mp4`` or ``.npz``
    (:func:`cleandiffuser.env.video.write_video`). Returns ``(path, backend)``, or ``(None, None)``
    with a warning when no backend works."""
    from .video import render_in_subprocess

    with tempfile.TemporaryDirectory() as tmp:
        act_file = Path(tmp) / "actions.npy"
        np.save(act_file, np.asarray(actions, dtype=np.float64))
        job = {"env_id": env_id, "reset_seed": int(reset_seed), "actions": str(act_file),
               "stem": str(path_stem), "max_episode_steps": int(max_episode_steps),
               "width": int(size[0]), "height": int(size[1]), "env_kwargs": env_kwargs or {}}
        info, backend = render_in_subprocess("cleandiffuser.env.evaluation:_render_worker", job, timeout)
    if info is None:
        return None, None
    if expected_return is not None and not np.isclose(info["return"], expected_return, rtol=1e-6, atol=1e-6):
        warnings.warn(f"video replay return {info['return']:.3f} differs from the evaluated episode's "
                      f"{expected_return:.3f}; the video may not show the evaluated episode")
    return info["path"], backend


def _render_worker() -> None:  # pragma: no cover - runs in a subprocess
    job = json.loads(sys.argv[-1])
    from cleandiffuser.env import make_env
    from cleandiffuser.env.video import write_video

    env = make_env(job["env_id"], seed=None, max_episode_steps=job["max_episode_steps"], render_mode="rgb_array",
                   width=job["width"], height=job["height"], **job["env_kwargs"])
    try:
        env.reset(seed=job["reset_seed"])
        frames = [env.render()]
        total = 0.0
        for a in np.load(job["actions"]):
            _, r, term, trunc, _ = env.step(a)
            total += float(r)
            frames.append(env.render())
            if term or trunc:
                break
        fps = int(env.metadata.get("render_fps") or 30)
    finally:
        env.close()
    path = write_video(np.stack(frames), job["stem"], fps)
    print(json.dumps({"path": str(path), "return": total, "frames": len(frames)}))
    sys.stdout.flush()
