"""Rollout evaluators of chunked-action policies, and `cleandiffuser eval RUN_DIR` for imitation runs.

An *evaluator* is ``evaluate(policy, n_episodes, seed, video=None) -> {"success_rate", "success_se",
"n_episodes", ...}`` (Push-T's also gives ``mean_max_coverage`` / ``max_coverage_se``); with ``video`` (a path
without suffix) it also renders episode 0 and gives the file as ``video``. The trainer uses one when
``training.online_rollouts=true``; which one follows ``task.env``:

* ``robosuite`` - robomimic env_args (``task.env_args`` or the dataset file's), through
  :func:`cleandiffuser.env.robosuite.evaluate_policy_robosuite`;
* ``pusht`` - gym-pusht's ``PushT-v0`` with state observations, through
  :func:`cleandiffuser.env.pusht.evaluate_pusht` (success = coverage > 0.95 within
  ``task.rollout_horizon`` steps, default 300); the policy's observation keys may be ``state`` (the env's
  5-d observation) and ``agent_pos`` (its first two numbers);
* null - robosuite when the dataset records env_args.

Rollouts are batched: ``training.eval_n_envs`` (default 10; ``--n-envs`` of ``cleandiffuser eval``)
environments step in lockstep and a :class:`~cleandiffuser.imitation.wrapper.BatchPolicyWrapper` calls
the policy once per step on the observation histories of the envs whose chunk is used up; finished envs
take the next pending episode. Episode ``i`` starts from its own seed, so for a deterministic policy the
per-episode results do not depend on the number of envs (a sampling policy's noise draws do).
The latency (``ms_per_chunk``) stays a batch-1 measurement. ``cleandiffuser eval RUN_DIR --video`` renders
the first rollout of each report row (robosuite: the agentview camera, offscreen in a subprocess; Push-T: the
env's own drawing) to ``video-<setting>.mp4`` (``.npz`` of frames without imageio-ffmpeg) beside the report.

    report = evaluate_run_imitation("runs/imitation/ctmp_pusht", ["policy.chaining_times=[0,20,40]"],
                                    episodes=50, seeds=[0, 1], chaining="both")
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..env.lockstep import check_n_envs
from ..runner.config import ConfigError
from .checkpoint import CHECKPOINT_FORMAT, find_policy_checkpoint, get_policy
from .policy import ChunkPolicy, fork_rng, measure_latency_ms
from .wrapper import BatchPolicyWrapper

__all__ = [
    "DEFAULT_EVAL_N_ENVS",
    "PUSHT_OBS_KEYS",
    "Evaluator",
    "eval_from_cli",
    "evaluate_run_imitation",
    "format_eval_report",
    "is_imitation_target",
    "make_evaluator",
    "pusht_evaluator",
    "robosuite_evaluator",
    "rollouts",
]

Evaluator = Callable[..., dict]  # (policy, n_episodes, seed, video=None) -> results

#: environments stepped side by side in rollouts when training.eval_n_envs is not set
DEFAULT_EVAL_N_ENVS = 10

#: Push-T observation keys a policy may use: computed from the env's state observation (5,)
PUSHT_OBS_KEYS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "state": lambda s: s,           # [agent_x, agent_y, block_x, block_y, block_angle]
    "agent_pos": lambda s: s[:2],
}


# ---------------------------------------------------------------------------- evaluators
def _check_n_envs(n_envs) -> int:
    try:
        return check_n_envs(n_envs)
    except ValueError:
        raise ConfigError(f"n_envs (training.eval_n_envs / --n-envs) must be an integer >= 1, got {n_envs!r}") from None


def _batch_wrapper(policy: ChunkPolicy, n_envs: int, n_episodes: int) -> BatchPolicyWrapper:
    """One slot per env that will run: min(n_envs, n_episodes), at least one."""
    return BatchPolicyWrapper(policy, max(1, min(n_envs, int(n_episodes))))


def robosuite_evaluator(env_args: dict, horizon: int | None = None, n_envs: int = DEFAULT_EVAL_N_ENVS) -> Evaluator:
    """evaluate(policy, n_episodes, seed) -> success rate +- SE of the policy in the robosuite env
    `env_args` (cleandiffuser.env.robosuite): min(n_envs, n_episodes) env instances step in
    lockstep through a BatchPolicyWrapper (one predict_action call per step for the envs that replan)."""
    n_envs = _check_n_envs(n_envs)
    try:
        from ..env import robosuite as rd
        rd._import_robosuite()
    except ImportError as e:
        raise ConfigError(f"robosuite rollouts need robosuite: {e}") from None

    def evaluate(policy: ChunkPolicy, n_episodes: int, seed: int, video=None) -> dict:
        wrapper = _batch_wrapper(policy, n_envs, n_episodes)
        return rd.evaluate_policy_robosuite(wrapper, env_args, n_episodes, seed, horizon=horizon,
                                            obs_keys=policy.obs_keys, images=bool(policy.rgb_keys),
                                            n_envs=wrapper.n_envs, batched=True, video=video)
    return evaluate


def pusht_evaluator(max_steps: int | None = None, n_envs: int = DEFAULT_EVAL_N_ENVS) -> Evaluator:
    """evaluate(policy, n_episodes, seed) -> success rate +- SE and mean max coverage +- SE of the
    policy on gym-pusht's Push-T with state observations (cleandiffuser.env.pusht.evaluate_pusht;
    episodes end at success or `max_steps`, default 300): min(n_envs, n_episodes) envs step in lockstep
    through a BatchPolicyWrapper (one predict_action call per step for the envs that replan)."""
    n_envs = _check_n_envs(n_envs)
    try:
        from ..env import pusht as pd
        pd._import_gym_pusht()
    except ImportError as e:
        raise ConfigError(f"Push-T rollouts need gym-pusht: {e}") from None
    steps = pd.MAX_STEPS if max_steps is None else int(max_steps)

    def evaluate(policy: ChunkPolicy, n_episodes: int, seed: int, video=None) -> dict:
        unknown = [k for k in policy.obs_keys if k not in PUSHT_OBS_KEYS]
        if unknown:
            raise ConfigError(f"Push-T rollouts give the observation keys {list(PUSHT_OBS_KEYS)}; the policy "
                              f"needs {unknown}")
        wrapper = _batch_wrapper(policy, n_envs, n_episodes)

        def policy_fn(obs_list, slots):
            return wrapper([_pusht_obs(o, policy.obs_keys) for o in obs_list], slots)

        policy_fn.reset = wrapper.reset
        return pd.evaluate_pusht(policy_fn, n_episodes, seed, max_steps=steps, n_envs=wrapper.n_envs, batched=True,
                                 video=video)
    return evaluate


def _pusht_obs(obs, keys) -> dict:
    """The policy's observation dict from Push-T's state observation (5,)."""
    s = np.asarray(obs, dtype=np.float32)
    return {k: PUSHT_OBS_KEYS[k](s) for k in keys}


def _dataset_env_args(path) -> dict | None:
    """data.attrs["env_args"] of a robomimic .hdf5 file (None for other files or when absent)."""
    path = Path(str(path)).expanduser()
    if path.suffix not in (".hdf5", ".h5", ".hdf") or not path.is_file():
        return None
    import h5py

    from ..dataset.robomimic_format import _decode
    with h5py.File(path, "r") as f:
        if "data" not in f or "env_args" not in f["data"].attrs:
            return None
        raw = _decode(f["data"].attrs["env_args"])
    return (json.loads(raw) if isinstance(raw, str) else dict(raw)) or None


def task_env(cfg, env_args: Mapping | None = None) -> str | None:
    """The rollout environment of a config: task.env, else robosuite when there are env_args."""
    env = cfg.task.get("env") if "task" in cfg else None
    return env or ("robosuite" if env_args else None)


def eval_n_envs(cfg) -> int:
    """training.eval_n_envs of a run config (DEFAULT_EVAL_N_ENVS when absent, e.g. in older runs)."""
    tr = cfg.get("training") or {}
    n = tr.get("eval_n_envs")
    return DEFAULT_EVAL_N_ENVS if n is None else _check_n_envs(n)


def make_evaluator(cfg, env_args: Mapping | None = None, n_envs: int | None = None) -> Evaluator:
    """The evaluator for a run config (see the module docstring). `env_args`: the dataset's
    (default: task.env_args, else read from task.dataset_path when it is a robomimic file).
    `n_envs`: environments stepped in lockstep (default training.eval_n_envs, else 10)."""
    n_envs = eval_n_envs(cfg) if n_envs is None else _check_n_envs(n_envs)
    task = cfg.task
    if task.get("env_args"):
        env_args = OmegaConf.to_container(task.env_args, resolve=True) if OmegaConf.is_config(task.env_args) \
            else dict(task.env_args)
    env = task.get("env")
    if env in (None, "robosuite") and not env_args and task.get("dataset_path"):
        env_args = _dataset_env_args(task.dataset_path)
    env = task_env(cfg, env_args)
    horizon = task.get("rollout_horizon")
    if env == "pusht":
        return pusht_evaluator(horizon, n_envs)
    if env == "robosuite":
        if not env_args:
            raise ConfigError("task.env=robosuite but neither task.env_args nor the dataset file records env_args")
        return robosuite_evaluator(dict(env_args), horizon, n_envs)
    raise ConfigError("rollouts need an environment: set task.env (robosuite | pusht); robosuite also needs env_args "
                      "(task.env_args or a robomimic dataset that records them)")


def rollouts(policy: ChunkPolicy, evaluate: Evaluator, n_episodes: int, seed: int, video=None) -> dict:
    """`evaluate` in eval mode on forked RNG streams seeded by `seed`: success_rate, success_se,
    episodes (and mean_max_coverage, max_coverage_se when the evaluator gives them; video, the file of
    episode 0, when `video` names one)."""
    was_training = policy.training
    policy.eval()
    with fork_rng(policy.device):
        torch.manual_seed(seed)
        res = evaluate(policy, n_episodes, seed, **({"video": video} if video is not None else {}))
    policy.train(was_training)
    out = {"success_rate": float(res["success_rate"]), "success_se": float(res["success_se"]),
           "episodes": int(res.get("n_episodes", n_episodes))}
    if video is not None:
        out["video"] = res.get("video")
    for k in ("mean_max_coverage", "max_coverage_se"):
        if k in res:
            out[k] = float(res[k])
    return out


def _pool(per_seed: list[dict]) -> dict:
    """Pool per-seed rollout results: success over all episodes (binomial SE), coverage as the
    episode-weighted mean with the SE of a stratified mean."""
    n = sum(r["episodes"] for r in per_seed)
    if n == 0:
        return {"success_rate": 0.0, "success_se": 0.0, "episodes": 0}
    p = sum(r["success_rate"] * r["episodes"] for r in per_seed) / n
    out = {"success_rate": p, "success_se": math.sqrt(p * (1 - p) / n), "episodes": n}
    if all("mean_max_coverage" in r for r in per_seed):
        out["mean_max_coverage"] = sum(r["mean_max_coverage"] * r["episodes"] for r in per_seed) / n
        out["max_coverage_se"] = math.sqrt(sum((r["episodes"] * r.get("max_coverage_se", 0.0)) ** 2
                                               for r in per_seed)) / n
    return out


# ---------------------------------------------------------------------------- cleandiffuser eval
def is_imitation_target(path) -> bool:
    """Whether `path` (a run directory or checkpoint file) belongs to the imitation trainer."""
    path = Path(path)
    if path.is_dir():
        cfg = path / "config.yaml"
        if cfg.is_file():
            loaded = OmegaConf.load(cfg)
            return isinstance(loaded, DictConfig) and "policy" in loaded
        return False
    if path.is_file():
        run_cfg = path.parent.parent / "config.yaml"
        if path.parent.name == "checkpoints" and run_cfg.is_file():
            return is_imitation_target(path.parent.parent)
        try:
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("cleandiffuser")
            return json.loads(raw).get("format") == CHECKPOINT_FORMAT if raw else False
        except Exception:  # noqa: BLE001 - not a safetensors checkpoint: not ours
            return False
    return False


def _variants(kind: str, sample_steps, chaining) -> list[tuple[dict, bool]]:
    """(extra overrides {key: value}, chained) per report row."""
    extra: list[dict] = [{}]
    if sample_steps:
        key = {"edm": "policy.noise_scheduler.bins", "ddim": "policy.num_inference_steps"}.get(kind)
        if key is None:
            raise ValueError(f"--sample-steps is for edm (Heun bins) and ddim (DDIM steps) policies; this one is "
                             f"{kind!r} (for a ctm student use policy.chaining_times=[...] and --chaining)")
        extra = [{key: int(s)} for s in sample_steps]
    if chaining and kind != "ctm":
        raise ValueError(f"chaining is for consistency (ctm) students; this run's policy is {kind!r}")
    modes = [False, True] if chaining == "both" else [bool(chaining)]
    return [(e, m) for e in extra for m in modes]


def evaluate_run_imitation(path, overrides: Sequence[str] | Mapping | None = (), episodes: int | None = None,
                           seeds: Sequence[int] | None = None, chaining: bool | str = False,
                           sample_steps: Sequence[int] | None = None, device: str | None = None,
                           latency_repeats: int | None = None, evaluate: Evaluator | None = None, out_dir=None,
                           n_envs: int | None = None, video: bool = False, say=print) -> dict:
    """Score an imitation run directory (its checkpoints/latest.ckpt) or policy checkpoint again.

    The policy is loaded with `get_policy(path, overrides)` (e.g. ["policy.noise_scheduler.bins=40"],
    ["policy.chaining_times=[0,20,40]"]). One report row per inference setting: `sample_steps` gives a
    row per value (edm: Heun bins; ddim: DDIM steps), `chaining` (ctm students) True scores chained
    inference, "both" one-step and chained. Each row: NFE, success rate +- binomial SE pooled over
    `episodes` (default training.eval_episodes) rollouts for each of `seeds` (default
    [training.rollout_seed]) (+ Push-T's mean max coverage +- SE), and the median ms of one batch-1
    predict_action call (a new chunk) over `latency_repeats` calls (default training.latency_repeats,
    else 20; 0 skips). Rollouts step `n_envs` environments in lockstep (default training.eval_n_envs,
    else 10; for a deterministic policy the results do not depend on it). `evaluate` replaces the
    environment's evaluator (see make_evaluator); episodes=0 scores latency only and needs no simulator.
    `video` renders each row's first rollout (first seed) to `out_dir`/video-<setting>.mp4 (or .npz; the
    row's "video", None where rendering failed). Writes report.json and report.md to `out_dir` (default
    RUN_DIR/eval/step_XXXXXXXX) and returns the report."""
    ckpt = find_policy_checkpoint(path)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    if overrides is None:
        overrides = []
    overrides = dict(overrides) if isinstance(overrides, Mapping) else [str(o) for o in overrides]

    def load(extra: dict) -> ChunkPolicy:
        ov = {**overrides, **extra} if isinstance(overrides, dict) else \
            overrides + [f"{k}={v}" for k, v in extra.items()]
        return get_policy(ckpt, cfg=ov, device=device)

    base = load({})
    cfg = base.cfg
    tr = cfg.get("training") or {}
    episodes = int(tr.get("eval_episodes", 50)) if episodes is None else int(episodes)
    seeds = [int(tr.get("rollout_seed", 0))] if not seeds else [int(s) for s in seeds]
    if latency_repeats is None:
        latency_repeats = int(tr.get("latency_repeats", 20) or 0)
    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    if video and episodes == 0:
        raise ValueError("video needs rollouts: episodes must be >= 1")
    out = Path(out_dir) if out_dir is not None else run_dir / "eval" / f"step_{int(base.step):08d}"
    variants = _variants(base.kind, sample_steps, chaining)
    rollout_envs = None  # recorded in the report when the environment's evaluator runs
    if episodes > 0 and evaluate is None:
        rollout_envs = eval_n_envs(cfg) if n_envs is None else _check_n_envs(n_envs)
        evaluate = make_evaluator(cfg, n_envs=rollout_envs)
    env = task_env(cfg, cfg.task.get("env_args") if "task" in cfg else None)
    say(f"evaluating {ckpt} (step {base.step:,}, {base.kind} {base.policy_cfg['backbone']}) on "
        f"{env or 'no environment'}: {episodes} episodes x seeds {seeds}")
    rows = []
    for extra, chained in variants:
        policy = load(extra) if extra else base
        if chained:
            policy.enable_chaining()
        elif policy.kind == "ctm":
            policy.disable_chaining()
        row: dict = {"setting": policy.inference_setting(), "nfe": policy.nfe()}
        if extra:
            row["overrides"] = [f"{k}={v}" for k, v in extra.items()]
        if latency_repeats > 0:
            row["ms_per_chunk"] = round(measure_latency_ms(policy, latency_repeats), 3)
        if episodes > 0:
            stem = out / ("video-" + (re.sub(r"[^A-Za-z0-9.]+", "-", row["setting"]).strip("-") or "policy"))
            per_seed = [{"seed": s, **rollouts(policy, evaluate, episodes, s, video=stem if video and j == 0 else None)}
                        for j, s in enumerate(seeds)]
            row.update(_pool(per_seed))
            if video:
                row["video"] = per_seed[0].pop("video")
            row["per_seed"] = per_seed
        say("  " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "per_seed"))
        rows.append(row)
    report = {"run_dir": str(run_dir), "checkpoint": str(ckpt), "kind": base.kind,
              "backbone": base.policy_cfg["backbone"], "name": (cfg.get("logging") or {}).get("name"),
              "task": cfg.task.get("name") if "task" in cfg else None, "env": env, "step": int(base.step),
              "overrides": overrides if isinstance(overrides, list) else {k: v for k, v in overrides.items()},
              "episodes_per_seed": episodes, "seeds": seeds, "device": str(base.device),
              "n_envs": rollout_envs, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "report.md").write_text(format_eval_report(report) + "\n")
    report["out_dir"] = str(out)
    return report


def format_eval_report(report: dict) -> str:
    """Markdown table of an evaluate_run_imitation report."""
    cov = any("mean_max_coverage" in r for r in report["rows"])
    title = (f"{report['kind']} ({report['backbone']}) policy {report.get('name') or ''} at step {report['step']:,}"
             f" on {report.get('env') or 'no environment'} ({report['episodes_per_seed']} episodes x seeds "
             f"{report['seeds']})")
    header = "| setting | NFE | success (mean ± SE) |" + (" max coverage (mean ± SE) |" if cov else "") + \
        " ms / chunk (batch 1) | episodes |"
    lines = [title, "", header, "|---|---:|---:|" + ("---:|" if cov else "") + "---:|---:|"]
    for r in report["rows"]:
        success = f"{r['success_rate']:.3f} ± {r['success_se']:.3f}" if "success_rate" in r else "n/a"
        line = f"| {r['setting']} | {r['nfe']} | {success} |"
        if cov:
            line += (f" {r['mean_max_coverage']:.3f} ± {r.get('max_coverage_se', 0.0):.3f} |"
                     if "mean_max_coverage" in r else " n/a |")
        ms = f"{r['ms_per_chunk']:.2f}" if "ms_per_chunk" in r else "n/a"
        lines.append(line + f" {ms} | {r.get('episodes', 0)} |")
    return "\n".join(lines)


def eval_from_cli(path, overrides=(), episodes=None, seeds=None, chaining: bool | str = False, sample_steps=None,
                  n_envs=None, device=None, video: bool = False) -> int:
    """`cleandiffuser eval RUN_DIR` for an imitation run: prints the table; 0 on success, 2 on an error."""
    import sys

    from ..dataset.validation import DatasetFormatError
    try:
        report = evaluate_run_imitation(path, overrides=list(overrides or ()), episodes=episodes, seeds=seeds,
                                        chaining=chaining, sample_steps=sample_steps, device=device, n_envs=n_envs,
                                        video=video)
    except (ConfigError, FileNotFoundError, ValueError, DatasetFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n" + format_eval_report(report))
    for row in report["rows"] if video else ():
        print(f"video ({row['setting']}): {row.get('video') or 'not rendered (see the warning above)'}")
    print(f"\nreport: {Path(report['out_dir']) / 'report.json'}")
    return 0
