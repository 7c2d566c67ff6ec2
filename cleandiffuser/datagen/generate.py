"""Generate D4RL-style offline datasets on gymnasium MuJoCo v5 environments.

* :func:`rollout` - N transitions of a policy (uniform ``"random"`` actions or a SAC actor
  snapshot sampled stochastically, as D4RL did), deterministic for a seed.
* :func:`generate_dataset` - rollout + D4RL-format HDF5 with provenance metadata.
* :func:`make_dataset` - build a named dataset (``halfcheetah-medium-cd-v0`` ...):
  ``random``, ``medium``, ``expert`` (rollouts), ``medium-replay`` (the behaviour run's
  replay history up to the medium snapshot) and ``medium-expert`` (medium + expert).
* :func:`dataset_info` - size, episodes, return statistics and normalized score of a file.

Rows are D4RL's: ``observations, actions, rewards, terminals, timeouts,
next_observations``. ``terminals`` marks environment termination, ``timeouts`` marks
truncation: the 1000-step time limit, and also the last row of a rollout when its
episode was cut by the end of the data (so concatenating files never merges episodes).
Return statistics count only episodes that ended by termination or the time limit.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Union

import numpy as np

from ..dataset import read_d4rl_hdf5, write_d4rl_hdf5
from ..dataset.sources import resolve_source
from ..runner.lock import file_lock, lock_path_for
from .policy import NumpyActor, file_sha256, load_actor_snapshot, same_snapshot
from .registry import ENVS, dataset_path, parse_dataset_name

__all__ = [
    "rollout",
    "generate_dataset",
    "make_dataset",
    "dataset_info",
    "episode_returns",
    "library_version",
    "BehaviourPolicyMissingError",
    "DEFAULT_STEPS",
]

DEFAULT_STEPS = 1_000_000


class BehaviourPolicyMissingError(FileNotFoundError):
    """medium/expert/medium-replay data needs a trained behaviour-policy run."""


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("cleandiffuser")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def _versions() -> dict:
    out = {}
    for mod in ("gymnasium", "mujoco"):
        try:
            out[f"{mod}_version"] = __import__(mod).__version__
        except Exception:  # pragma: no cover
            out[f"{mod}_version"] = "unavailable"
    out["numpy_version"] = np.__version__
    out["library"] = "cleandiffuser"
    out["library_version"] = library_version()
    return out


# --------------------------------------------------------------------------- rollouts
def rollout(env_id: str, policy: Union[str, NumpyActor], n_steps: int, seed: int = 0, progress: bool = False,
            desc: str | None = None) -> tuple[dict, dict]:
    """Roll out ``n_steps`` transitions; returns ``(arrays, stats)``.

    ``policy`` is ``"random"`` (uniform actions in the action box) or a
    :class:`NumpyActor` whose tanh-Gaussian is *sampled*. The env is reset with ``seed``
    once (later resets continue its seeded stream); action noise comes from
    ``np.random.default_rng(seed)``. Same seed -> identical arrays.
    """
    from tqdm.auto import tqdm

    from ..env import make_env

    if n_steps <= 0:
        raise ValueError("n_steps must be positive")
    env = make_env(env_id, seed=seed)
    obs = env.cd_first_obs
    o_dim, a_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    rng = np.random.default_rng(seed)
    if isinstance(policy, str) and policy != "random":
        raise ValueError(f"policy must be 'random' or a NumpyActor, got {policy!r}")
    if isinstance(policy, NumpyActor) and (policy.obs_dim != o_dim or policy.act_dim != a_dim):
        raise ValueError(f"policy dims ({policy.obs_dim}, {policy.act_dim}) do not match {env_id} ({o_dim}, {a_dim})")
    data = {
        "observations": np.empty((n_steps, o_dim), np.float32),
        "actions": np.empty((n_steps, a_dim), np.float32),
        "rewards": np.empty((n_steps,), np.float32),
        "terminals": np.zeros((n_steps,), bool),
        "timeouts": np.zeros((n_steps,), bool),
        "next_observations": np.empty((n_steps, o_dim), np.float32),
    }
    returns, lengths, ep_ret, ep_len = [], [], 0.0, 0
    bar = tqdm(total=n_steps, disable=not progress, unit="step", unit_scale=True, mininterval=1.0, desc=desc)
    for t in range(n_steps):
        if isinstance(policy, str):
            action = rng.uniform(low, high).astype(np.float32)
        else:
            action = policy.act(obs, rng)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        data["observations"][t] = obs
        data["actions"][t] = action
        data["rewards"][t] = reward
        data["next_observations"][t] = next_obs
        data["terminals"][t] = terminated
        data["timeouts"][t] = truncated and not terminated
        ep_ret += float(reward)
        ep_len += 1
        if terminated or truncated:
            returns.append(ep_ret)
            lengths.append(ep_len)
            ep_ret, ep_len = 0.0, 0
            obs, _ = env.reset()
        else:
            obs = next_obs
        if progress and (t + 1) % 1000 == 0:
            bar.update(1000)
    bar.update(n_steps - bar.n)
    bar.close()
    env.close()
    cut = ep_len > 0
    if cut:  # the data ends inside an episode: mark it truncated
        data["timeouts"][-1] = True
    stats = _stats(env_id, returns, lengths)
    stats["n_episodes"] = len(returns) + int(cut)
    stats["last_episode_cut_by_data_end"] = bool(cut)
    return data, stats


def _stats(env_id: str, returns: list, lengths: list) -> dict:
    from ..env import normalized_score

    r = np.asarray(returns, dtype=np.float64)
    mean = float(r.mean()) if len(r) else float("nan")
    return {
        "n_complete_episodes": int(len(r)),
        "return_mean": mean,
        "return_std": float(r.std()) if len(r) else float("nan"),
        "return_min": float(r.min()) if len(r) else float("nan"),
        "return_max": float(r.max()) if len(r) else float("nan"),
        "episode_length_mean": float(np.mean(lengths)) if len(lengths) else float("nan"),
        "normalized_score": normalized_score(env_id, mean) if len(r) else float("nan"),
    }


def episode_returns(rewards, terminals, timeouts, max_episode_steps: int | None = 1000,
                    last_cut: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of the complete episodes in flat D4RL arrays.

    Episodes end at rows with ``terminals`` or ``timeouts``. The last episode counts
    only if it ended by termination or reached ``max_episode_steps`` (unless
    ``last_cut`` says explicitly whether the data end cut it); rows after the last flag
    are ignored.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    term, tout = np.asarray(terminals, bool), np.asarray(timeouts, bool)
    ends = np.flatnonzero(term | tout)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(int)
    csum = np.concatenate([[0.0], np.cumsum(rewards)])
    rets = csum[ends + 1] - csum[starts]
    lens = ends + 1 - starts
    if len(ends):
        last = len(ends) - 1
        if last_cut is None:
            last_cut = not term[ends[last]] and (max_episode_steps is None or lens[last] < max_episode_steps) \
                and ends[last] == len(rewards) - 1
        if last_cut:
            rets, lens = rets[:last], lens[:last]
    return rets, lens


def _command() -> str:
    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]])


def generate_dataset(out, env_id: str, policy: Union[str, os.PathLike] = "random", n_steps: int = DEFAULT_STEPS,
                     seed: int = 0, name: str | None = None, command: str | None = None, progress: bool = False,
                     extra_metadata: dict | None = None) -> Path:
    """Roll out ``policy`` (``"random"`` or a snapshot file) and write a D4RL HDF5 at
    ``out`` with provenance metadata. Returns the path."""
    if isinstance(policy, str) and policy == "random":
        actor, policy_meta = "random", {"policy": "random", "policy_sha256": "", "action_sampling": "uniform in the action box"}
    else:
        p = Path(policy)
        actor = load_actor_snapshot(p)
        policy_meta = {
            "policy": p.name,
            "policy_sha256": file_sha256(p),
            "policy_env_steps": int(actor.meta.get("env_steps", -1)),
            "policy_trained_on": actor.meta.get("env_id", ""),
            "action_sampling": "stochastic: tanh(mu + std * N(0, 1)) of the SAC actor",
        }
    data, stats = rollout(env_id, actor, n_steps, seed, progress=progress, desc=name)
    meta = {
        "dataset_name": name or Path(out).stem,
        "env_id": env_id,
        "max_episode_steps": 1000,
        "seed": int(seed),
        "n_transitions": int(n_steps),
        **policy_meta,
        **stats,
        "generation_command": command or _command(),
        "generator": "cleandiffuser.datagen.generate.rollout",
        **_versions(),
        **(extra_metadata or {}),
    }
    return write_d4rl_hdf5(out, data, metadata=meta)


# --------------------------------------------------------------------------- named datasets
def _default_run_dir(env: str) -> Path:
    return Path("runs") / "behaviour" / env


def _train_hint(env: str, run_dir: Path) -> str:
    return (f"python -m cleandiffuser.datagen.train_behaviour --env {ENVS[env]} --out {run_dir} --steps 1000000 "
            f"(resumable; hours on a CPU)")


SHIPPED_POLICIES = Path(__file__).parent / "policies"


def shipped_policy(env: str, kind: str) -> Path | None:
    """The behaviour-policy snapshot shipped with the package for (env, kind), if any
    (`policies/<env id>/selection.json` maps kinds to snapshot files)."""
    sel = SHIPPED_POLICIES / ENVS[env] / "selection.json"
    name = json.loads(sel.read_text()).get(kind) if sel.is_file() else None
    return sel.parent / name if name else None


def _shipped_replay_cut(env: str, shipped: Path, run_dir: Path, from_rerun: bool = False) -> tuple[int, bool]:
    """Env step of a shipped snapshot (actor_000080000 -> 80000), and whether `run_dir` holds that very snapshot
    (the run that made it). A run that does not is refused unless `from_rerun`."""
    step = int(shipped.stem.rsplit("_", 1)[1])
    own = run_dir / "snapshots" / shipped.name
    same = own.is_file() and same_snapshot(own, shipped)
    if not same and not from_rerun:
        raise BehaviourPolicyMissingError(
            f"medium-replay is the replay buffer of the SAC run that made the shipped {shipped.name}; "
            f"{run_dir} does not hold that snapshot (missing or different weights). A rerun,\n    "
            f"{_train_hint(env, run_dir)} (--steps {step} suffice),\n"
            f"may reproduce those weights (one thread: a Hopper rerun did on a 2-core CPU, another diverged after its "
            f"first update); when it does not, pass --from-rerun to take a rerun's replay "
            f"buffer up to the same env step ({step:,}; the file records that it is a rerun), or --run DIR to cut "
            f"your own run at its own selection.json's medium snapshot.")
    return step, same


def _selection(env: str, run_dir: Path) -> dict:
    from .sac import select_snapshots

    if not (run_dir / "eval.csv").is_file():
        raise BehaviourPolicyMissingError(
            f"no behaviour-policy run in {run_dir} (needed for {env} medium/expert/medium-replay data). "
            f"Train one with\n    {_train_hint(env, run_dir)}\nor pass --run DIR (a finished run) or --policy FILE."
        )
    sel_path = run_dir / "selection.json"
    sel = json.loads(sel_path.read_text()) if sel_path.is_file() else select_snapshots(run_dir)
    if sel["env_id"] != ENVS[env]:
        raise ValueError(f"run {run_dir} trained {sel['env_id']}, not {ENVS[env]}")
    return sel


def make_dataset(name: str, out=None, seed: int = 0, steps: int | None = None, run_dir=None, policy=None,
                 progress: bool = True, command: str | None = None, force: bool = False, from_rerun: bool = False,
                 log=print, wait: bool = False) -> Path:
    """Build the named generated dataset (see :mod:`cleandiffuser.datagen.registry`) at
    ``out`` (default: its place in the data dir). ``policy`` (a snapshot file) overrides
    the snapshot chosen from the behaviour run ``run_dir`` (default
    ``runs/behaviour/ENV``) for medium/expert. ``from_rerun`` lets medium-replay come from a SAC run that did not
    make the shipped medium snapshot (a rerun of it), cut at the same env step. Returns the path.

    One process at a time makes a file: a lock beside it (``.NAME.lock``) is held from the existence check to
    the written file. When another process holds it, this one is refused (RunLockedError), or with ``wait``
    waits for it and then returns the file it made (an existing file is returned as it is, with ``wait``)."""
    parse_dataset_name(name)  # an unknown name is an error before anything is created
    out = Path(out) if out is not None else dataset_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path_for(out), out, "making this dataset", wait=wait):
        if out.exists() and not force:
            if wait:
                return out
            raise FileExistsError(f"{out} exists (use --force to regenerate it)")
        return _make_dataset(name, out, seed, steps, run_dir, policy, progress, command, from_rerun, log)


def _make_dataset(name: str, out: Path, seed: int, steps: int | None, run_dir, policy, progress: bool,
                  command: str | None, from_rerun: bool, log) -> Path:
    """make_dataset's work, under the file's lock."""
    env, kind = parse_dataset_name(name)
    env_id = ENVS[env]
    say = log or (lambda s: None)
    n = int(steps) if steps is not None else DEFAULT_STEPS
    run_dir_given = run_dir is not None
    run_dir = Path(run_dir) if run_dir_given else _default_run_dir(env)
    command = command or _command()
    extra = {"dataset_kind": kind, "dataset_family": "cleandiffuser generated (D4RL-style, not D4RL)"}

    if kind == "random":
        say(_eta(name, n, "random"))
        return generate_dataset(out, env_id, "random", n, seed, name, command, progress, extra)

    if kind in ("medium", "expert"):
        # the shipped snapshot defines the dataset; a behaviour run is used only when named (--run)
        if policy is None and not run_dir_given and shipped_policy(env, kind) is not None:
            policy = shipped_policy(env, kind)
            extra["behaviour_policy"] = f"shipped snapshot {policy.name}"
        if policy is None:
            sel = _selection(env, run_dir)
            policy = run_dir / sel[kind]["snapshot"]
            extra.update({"behaviour_run": str(run_dir), "snapshot_eval_return": sel[kind]["eval_return_mean"]})
        say(_eta(name, n, "policy"))
        return generate_dataset(out, env_id, policy, n, seed, name, command, progress, extra)

    if kind == "medium-replay":
        from .sac import load_replay_transitions

        sel = _selection(env, run_dir)
        stop = int(sel["medium_replay_transitions"])
        shipped = shipped_policy(env, "medium")
        if shipped is not None and not run_dir_given:
            # the replay buffer of the run that produced the shipped medium snapshot, up to that snapshot
            stop, same = _shipped_replay_cut(env, shipped, run_dir, from_rerun)
            sel = {**sel, "medium": {**sel["medium"], "snapshot": f"snapshots/{shipped.name}"}}
            extra["replay_run_made_shipped_snapshot"] = same
            if not same:
                say(f"note: {run_dir} is a rerun (its {shipped.name} differs from the shipped one): its replay buffer "
                    f"up to {stop:,} env steps follows the same recipe but is not the same data")
        if steps is not None:
            say(f"note: --steps is ignored for {name}: it holds every transition collected up to the medium snapshot")
        say(f"Reading {stop:,} replay transitions from {run_dir}/buffer ...")
        rb = load_replay_transitions(run_dir, stop)
        term = rb["terminated"].astype(bool)
        tout = rb["truncated"].astype(bool) & ~term
        cut = not (term[-1] or tout[-1])
        if cut:
            tout[-1] = True
        data = {"observations": rb["obs"], "actions": rb["act"], "rewards": rb["rew"], "terminals": term,
                "timeouts": tout, "next_observations": rb["next_obs"]}
        rets, lens = episode_returns(rb["rew"], term, tout, last_cut=cut)
        stats = _stats(env_id, list(rets), list(lens))
        stats.update(n_episodes=int((term | tout).sum()), last_episode_cut_by_data_end=bool(cut))
        cfg = json.loads((run_dir / "config.json").read_text())
        meta = {
            "dataset_name": name, "env_id": env_id, "max_episode_steps": 1000, "seed": int(cfg["seed"]),
            "n_transitions": int(stop), "policy": "SAC replay buffer up to the medium snapshot",
            "medium_snapshot": sel["medium"]["snapshot"], "medium_snapshot_env_steps": stop,
            "behaviour_run": str(run_dir), "sac_config": json.dumps(cfg), **stats,
            "generation_command": command, "generator": "cleandiffuser.datagen.generate.make_dataset",
            **_versions(), **extra,
        }
        return write_d4rl_hdf5(out, data, metadata=meta)

    # medium-expert: medium followed by expert (made first when missing)
    parts = []
    for sub in ("medium", "expert"):
        sub_name = f"{env}-{sub}-cd-v0"
        sub_path = out.parent / f"{sub_name}.hdf5"
        if not sub_path.is_file():
            say(f"{sub_name} is needed first; making it at {sub_path}")
            make_dataset(sub_name, sub_path, seed, steps, run_dir if run_dir_given else None, None, progress,
                         command, force=False, log=log, wait=True)  # another process making it: use its file
        parts.append((sub_name, sub_path, read_d4rl_hdf5(sub_path)))
    keys = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
    data = {k: np.concatenate([p[2][k] for p in parts]) for k in keys}
    rets, lens = [], []
    for _, _, d in parts:
        cut = bool(d["metadata"].get("last_episode_cut_by_data_end", False))
        r, l = episode_returns(d["rewards"], d["terminals"], d["timeouts"], last_cut=cut)
        rets += list(r)
        lens += list(l)
    stats = _stats(env_id, rets, lens)
    stats.update(n_episodes=int((data["terminals"] | data["timeouts"]).sum()))
    meta = {
        "dataset_name": name, "env_id": env_id, "max_episode_steps": 1000, "n_transitions": int(len(data["rewards"])),
        "policy": "medium + expert", "components": [p[0] for p in parts],
        "component_sha256": [file_sha256(p[1]) for p in parts],
        "component_policy_sha256": [str(p[2]["metadata"].get("policy_sha256", "")) for p in parts],
        "seed": int(seed), **stats, "generation_command": command,
        "generator": "cleandiffuser.datagen.generate.make_dataset", **_versions(), **extra,
    }
    return write_d4rl_hdf5(out, data, metadata=meta)


def _eta(name: str, n: int, what: str) -> str:
    rate = 10_000 if what == "random" else 8_000  # rough env steps/s on one busy CPU core
    secs = n / rate
    when = f"about {secs / 60:.0f} minutes" if secs >= 90 else f"about {max(secs, 1):.0f} seconds"
    return f"Generating {name}: {n:,} transitions; this takes {when} on one CPU core."


# --------------------------------------------------------------------------- info
def dataset_info(source) -> dict:
    """Summary of a D4RL HDF5 file or generated dataset name: path, file size, rows,
    dims, episodes, return mean/std and normalized score (when the env is known), and
    the file's metadata."""
    try:
        env, _ = parse_dataset_name(str(source))
        path = dataset_path(str(source))
        if not path.is_file():
            resolve_source(str(source))  # raises the registry's "make it with ..." error
    except ValueError:
        _, path = resolve_source(source)
    data = read_d4rl_hdf5(path)
    meta = data["metadata"]
    cut = meta.get("last_episode_cut_by_data_end")
    rets, lens = episode_returns(data["rewards"], data["terminals"], data["timeouts"],
                                 last_cut=None if cut is None else bool(cut))
    env_key = meta.get("env_id") or meta.get("dataset_name") or Path(path).stem
    try:
        from ..env import normalized_score

        score = normalized_score(env_key, float(rets.mean())) if len(rets) else float("nan")
    except KeyError:
        score = float("nan")
    n = len(data["rewards"])
    return {
        "path": str(path),
        "file_bytes": os.path.getsize(path),
        "transitions": n,
        "obs_dim": int(data["observations"].shape[1]),
        "act_dim": int(data["actions"].shape[1]),
        "episodes": int((data["terminals"] | data["timeouts"]).sum()) + int(not (data["terminals"][-1] or data["timeouts"][-1])),
        "complete_episodes": int(len(rets)),
        "terminals": int(data["terminals"].sum()),
        "timeouts": int(data["timeouts"].sum()),
        "return_mean": float(rets.mean()) if len(rets) else float("nan"),
        "return_std": float(rets.std()) if len(rets) else float("nan"),
        "normalized_score": score,
        "metadata": meta,
    }
