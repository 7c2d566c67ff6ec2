"""Train a chunked-action imitation policy (EDM teacher, Consistency Policy student, DDPM/DDIM
baseline) in its own run directory, with the offline-RL runner's layout:

    run_dir/
      config.yaml            the resolved configuration (what --resume reads back)
      environment.json       versions, command line, git commit, host
      log.csv, tb/           training losses, learning rate, throughput (TensorBoard when installed)
      val.csv                validation action-MSE on held-out episodes (+ rollout success when enabled)
      checkpoints/           latest.ckpt (atomic, every logging.checkpoint_every), step_XXXXXXXX.ckpt
                             (every logging.keep_every); each is a policy checkpoint for get_policy
      report.json, report.md per inference setting: NFE, validation MSE, ms per predict_action call
                             (batch 1), success rate +- SE over training.eval_episodes rollouts

Resuming continues the exact sequence of losses: the checkpoint holds the model, EMA, optimizer,
step, batch sampler generator and the global RNG states; validation, latency and rollouts run on
forked RNG streams so they never change the training's random numbers.
"""
from __future__ import annotations

import csv
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..dataset.chunking import ChunkedDataset
from ..dataset.robomimic_format import read_robomimic_hdf5
from ..dataset.validation import DatasetFormatError
from ..dataset.zarr_format import read_zarr_replay
from ..runner.config import ConfigError, _load_file, apply_overrides
from ..runner.guards import NonFiniteLossError, check_finite_losses, check_resume_config
from ..runner.lock import RunDirLock
from ..runner.offline import (
    RunLog,
    _rng_state,
    _set_rng_state,
    environment_info,
    log_window_state,
    resolve_device,
    restore_log_window,
)
from ..runner.rundir import latest_checkpoint, remove_stale_temp_files
from .checkpoint import load_policy_state, read_policy_checkpoint, save_policy
from .config import check_imitation_config, load_imitation_config
from .encoder import parse_shape_meta
from .evaluate import Evaluator, make_evaluator, robosuite_evaluator, task_env
from .evaluate import rollouts as _rollouts
from .policy import ChunkPolicy, fork_rng, lr_at, measure_latency_ms

__all__ = [
    "ImitationData",
    "format_report",
    "is_imitation_config",
    "is_imitation_run",
    "load_imitation_data",
    "robosuite_evaluator",
    "run_from_cli",
    "train_imitation",
    "validation_mse",
]

# What a resume must keep as the checkpoint recorded it: the data and its split, the seed, the observation and
# action layout, and the policy and optimizer (what shaped the weights) ...
RESUME_FIXED_KEYS = ("seed", "task.dataset_path", "task.val_ratio", "task.split_seed", "task.max_episodes",
                     "task.abs_action", "task.rotation_rep", "shape_meta", "horizon", "n_obs_steps", "n_action_steps",
                     "dataset", "policy", "optimizer")
# ... except the policy settings that only apply at inference
INFERENCE_ONLY_POLICY_KEYS = ("policy.chaining_times", "policy.num_inference_steps")


# ---------------------------------------------------------------------------- data
class ImitationData:
    """Train / validation ChunkedDatasets of a config's dataset, and the file's env_args."""

    def __init__(self, train: ChunkedDataset, val: ChunkedDataset | None, env_args: dict | None,
                 n_train_episodes: int, n_val_episodes: int):
        self.train, self.val, self.env_args = train, val, env_args
        self.n_train_episodes, self.n_val_episodes = n_train_episodes, n_val_episodes


def _episode_obs(ep: dict, key: str):
    obs = ep.get("obs")
    return obs[key] if isinstance(obs, dict) and key in obs else ep.get(key)


def load_imitation_data(cfg: DictConfig, normalizer=None) -> ImitationData:
    """Read `task.dataset_path` (robomimic .hdf5 / DP .zarr), check it against shape_meta, hold out
    `task.val_ratio` of the episodes (seeded by task.split_seed) and build the chunk datasets. The
    normalizer is fitted on the training episodes unless one is given (a student uses its teacher's).
    With task.rotation_rep=rotation_6d the datasets (and the normalizer) hold [pos, rot6d, gripper]
    actions; task.abs_action is checked against the controller of the env_args."""
    from .actions import ActionTransform, check_abs_action  # lazily: see ChunkPolicy.__init__

    meta = parse_shape_meta(cfg.shape_meta)
    obs_keys = list(meta["obs"])
    rgb = [k for k in obs_keys if meta["obs"][k]["type"] == "rgb"]
    path = Path(str(cfg.task.dataset_path)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"task.dataset_path: {path} not found")
    env_args = None
    if path.suffix in (".hdf5", ".h5", ".hdf"):
        data = read_robomimic_hdf5(path, obs_keys=obs_keys)
        episodes, env_args = data.episodes, (data.env_args or None)
    elif path.suffix == ".zarr" or path.is_dir():
        try:
            episodes = read_zarr_replay(path, keys=obs_keys + ["action"])
        except DatasetFormatError:
            episodes = read_zarr_replay(path, keys=obs_keys + ["actions"])
    else:
        raise ConfigError(f"task.dataset_path={path}: unknown format; expected a robomimic .hdf5 file or a "
                          "Diffusion Policy .zarr replay buffer")
    if cfg.task.get("env_args"):
        env_args = OmegaConf.to_container(cfg.task.env_args, resolve=True) if OmegaConf.is_config(
            cfg.task.env_args) else dict(cfg.task.env_args)
    check_abs_action(bool(cfg.task.get("abs_action", False)), env_args)
    max_eps = cfg.task.get("max_episodes")
    if max_eps:
        episodes = episodes[:int(max_eps)]
    ep0 = episodes[0]
    for k in obs_keys:
        arr = np.asarray(_episode_obs(ep0, k))
        want = meta["obs"][k]["shape"]
        got = list(arr.shape[1:])
        if meta["obs"][k]["type"] == "rgb":
            if len(got) != 3 or [got[2], got[0], got[1]] != want:
                raise ConfigError(f"shape_meta.obs.{k} is rgb {want} (C, H, W) but the dataset stores "
                                  f"{tuple(got)} per step (expected (H, W, C) = ({want[1]}, {want[2]}, {want[0]}))")
        elif got != want:
            raise ConfigError(f"shape_meta.obs.{k}.shape is {want} but the dataset has {tuple(got)} per step")
    act = np.asarray(ep0["actions"] if "actions" in ep0 else ep0["action"])
    if list(act.shape[1:]) != meta["action"]["shape"]:
        raise ConfigError(f"shape_meta.action.shape is {meta['action']['shape']} but the dataset's actions have "
                          f"{tuple(act.shape[1:])} per step")
    n = len(episodes)
    ratio = float(cfg.task.get("val_ratio", 0.0))
    n_val = min(n - 1, max(1, int(round(ratio * n)))) if ratio > 0 and n >= 2 else 0
    perm = np.random.default_rng(int(cfg.task.get("split_seed", cfg.seed))).permutation(n)
    val_ids = set(perm[:n_val].tolist())
    train_eps = [e for i, e in enumerate(episodes) if i not in val_ids]
    val_eps = [e for i, e in enumerate(episodes) if i in val_ids]
    transform = ActionTransform(cfg.task.get("rotation_rep", "axis_angle"), act.shape[1])
    kw = dict(obs_keys=obs_keys, horizon=int(cfg.horizon), n_obs_steps=int(cfg.n_obs_steps),
              n_action_steps=int(cfg.n_action_steps), image_keys=rgb,
              action_transform=None if transform.identity else transform)
    norm = normalizer if normalizer is not None else str(cfg.dataset.get("normalizer", "limits"))
    train = ChunkedDataset(train_eps, normalizer=norm, **kw)
    val = ChunkedDataset(val_eps, normalizer=train.normalizer, **kw) if val_eps else None
    return ImitationData(train, val, env_args, len(train_eps), len(val_eps))


# ---------------------------------------------------------------------------- evaluation
def validation_mse(policy: ChunkPolicy, batch: dict, chunk: int = 256) -> dict:
    """Action MSE (normalized units) of the policy's samples on fixed validation windows: over the
    whole predicted chunk (`val_mse`) and over the executed actions (`val_mse_exec`). Runs on a
    forked RNG with a fixed seed."""
    was_training = policy.training
    policy.eval()
    start, ta = policy.n_obs_steps - 1, policy.n_action_steps
    preds = []
    n = batch["action"].shape[0]
    with fork_rng(policy.device):
        torch.manual_seed(0)
        for i in range(0, n, chunk):
            obs = {k: v[i:i + chunk] for k, v in batch["obs"].items()}
            preds.append(policy.predict_normalized(obs))
    policy.train(was_training)
    pred, target = torch.cat(preds), batch["action"]
    err = (pred - target) ** 2
    return {"val_mse": float(err.mean()), "val_mse_exec": float(err[:, start:start + ta].mean())}


class _Csv:
    """A CSV log that, on resume, keeps only rows up to the checkpoint's step."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None):
        self.path, self.columns = path, columns
        rows = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)


# ---------------------------------------------------------------------------- checkpoints
def _save_run_checkpoint(path, policy: ChunkPolicy, sampler, cfg: DictConfig, step: int,
                         train_seconds: float = 0.0, log_window: dict | None = None) -> None:
    """`train_seconds`: training wall time up to `step`, summed over every session of the run; `log_window`: the
    log row in progress (runner.offline.log_window_state), so that a resumed run logs the same row."""
    rng_tensors, rng_meta = _rng_state()
    extra = {"sampler/generator": sampler.generator.get_state(), **rng_tensors}
    meta = {"rng": rng_meta, "run_step": step, "train_seconds": float(train_seconds)}
    if log_window is not None:
        meta["log_window"] = log_window
    save_policy(path, policy, OmegaConf.to_container(cfg, resolve=True), extra_tensors=extra, extra_meta=meta)


def default_run_dir(cfg: DictConfig) -> Path:
    name = cfg.logging.get("name") or f"{cfg.policy.kind}_{cfg.task.get('name', 'task')}"
    return Path("runs") / "imitation" / f"{name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------------- training
def train_imitation(cfg, run_dir=None, resume: bool = False, progress: bool = True, stop_at: int | None = None,
                    evaluate: Evaluator | None = None, log=print) -> dict:
    """Train the policy of `cfg` in `run_dir` (new, or an existing one with resume=True), validate,
    optionally roll out, and write the report; returns it (also run_dir/report.json).

    `evaluate(policy, n_episodes, seed) -> {"success_rate", "success_se", "n_episodes"}` (optionally
    "mean_max_coverage", "max_coverage_se") replaces the environment's evaluator used when
    training.online_rollouts=true (evaluate.make_evaluator: task.env robosuite | pusht). `stop_at`: checkpoint and
    return {} after that step, as an interrupted run would (resume=True continues it).

    The run directory is locked while this process trains in it (a second writer gets RunLockedError); a
    resume may only extend the run (ConfigError otherwise, see RESUME_FIXED_KEYS); a loss that turns NaN/inf
    stops training with NonFiniteLossError, leaving the last checkpoint as it was."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    check_imitation_config(cfg)
    if cfg.training.inference_mode:
        raise ConfigError("training.inference_mode=true is for loading a trained policy (get_policy); "
                          "set training.inference_mode=false to train")
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    with RunDirLock(run_dir) as lock:
        return _train_imitation(cfg, run_dir, lock, resume, progress, stop_at, evaluate, log)


def _train_imitation(cfg: DictConfig, run_dir: Path, lock: RunDirLock, resume: bool, progress: bool,
                     stop_at: int | None, evaluate: Evaluator | None, log) -> dict:
    device = resolve_device(str(cfg.device))
    lock.take_if_exists()  # before reading its checkpoint, so that no live writer replaces it meanwhile
    latest = latest_checkpoint(run_dir, resume)
    ckpt_dir = latest.parent
    if resume:  # checked before the policy is built and the data read
        tensors, meta, _ = read_policy_checkpoint(latest)
        check_resume_config(meta["config"], OmegaConf.to_container(cfg, resolve=True), int(meta["step"]),
                            int(cfg.training.steps), "training.steps", RESUME_FIXED_KEYS, INFERENCE_ONLY_POLICY_KEYS,
                            latest)

    seed = int(cfg.seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        policy = ChunkPolicy.from_config(cfg, device=device, inference_mode=False)
    except (ValueError, KeyError) as e:
        raise ConfigError(str(e)) from e
    data = load_imitation_data(cfg, normalizer=policy.normalizer)  # a student uses its teacher's normalizer
    if policy.normalizer is None:
        policy.set_normalizer(data.train.normalizer)
    tr = cfg.training
    online = bool(tr.online_rollouts)
    if online and evaluate is None:
        env = task_env(cfg, data.env_args)
        if env is None:
            raise ConfigError("training.online_rollouts=true but the config names no environment: set task.env "
                              "(robosuite | pusht; robosuite needs env_args from the dataset or task.env_args) "
                              "or training.online_rollouts=false")
        evaluate = make_evaluator(cfg, data.env_args)
    sampler = data.train.sampler(int(tr.batch_size), device=device, generator=seed)

    start, seconds_before = 0, 0.0
    sums: dict[str, float] = {}  # loss sums of the log row in progress, over `count` steps
    count = 0
    if resume:
        seconds_before = float(meta.get("train_seconds", 0.0))
        sums, count = restore_log_window(meta)
        load_policy_state(policy, tensors, meta, load_optimizer=True, source=str(latest))
        sampler.generator.set_state(tensors["sampler/generator"])
        _set_rng_state(tensors, meta["rng"])
        start = int(meta["step"])
        log(f"resumed {run_dir} at step {start:,}")

    lock.take()  # at the latest before the first write (it creates run_dir)
    latest_checkpoint(run_dir, resume)  # again under the lock: another run may have started here meanwhile
    remove_stale_temp_files(ckpt_dir)  # left by a writer killed mid-write; under the lock none is alive
    OmegaConf.save(cfg, run_dir / "config.yaml")
    info = environment_info() | {"device": str(device), "n_train_episodes": data.n_train_episodes,
                                 "n_val_episodes": data.n_val_episodes}
    (run_dir / "environment.json").write_text(json.dumps(info, indent=1))
    runlog = RunLog(run_dir, start if resume else None)
    vallog = _Csv(run_dir / "val.csv", ["step", "val_mse", "val_mse_exec", "success_rate", "success_se", "episodes",
                                        "mean_max_coverage", "max_coverage_se"], start if resume else None)
    val_batch = None
    if data.val is not None and int(tr.val_windows) > 0:
        n_val = min(len(data.val), int(tr.val_windows))
        idx = torch.from_numpy(np.linspace(0, len(data.val) - 1, n_val).round().astype(np.int64))
        val_batch = {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
                     for k, v in data.val.gather(idx).items()}

    steps, oc = int(tr.steps), policy.optim_cfg
    lg = cfg.logging
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc=f"{policy.kind} {cfg.logging.get('name') or ''}".strip(),
                   unit="step", dynamic_ncols=True, smoothing=0.05, mininterval=0.5 if sys.stderr.isatty() else 30.0)
    timed, t_log, t_start = 0, time.perf_counter(), time.perf_counter()  # updates/s: this session's steps only
    policy.train()
    last = steps if stop_at is None else min(steps, int(stop_at))
    for step in range(start + 1, last + 1):
        lr = lr_at(step - 1, float(oc["lr"]), int(oc["lr_warmup_steps"]), steps, oc["lr_scheduler"])
        out = policy.update(sampler.sample(), lr=lr)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)  # a NaN or inf on any step stays in the sum
        count += 1
        timed += 1
        if bar is not None:
            bar.update(1)
        if lg.log_every and step % int(lg.log_every) == 0:
            check_finite_losses(sums, step - count + 1, step, latest)
            now = time.perf_counter()
            row = {"step": step, "wall_s": round(seconds_before + now - t_start, 2),
                   "updates_per_s": round(timed / (now - t_log), 2),
                   "lr": lr}
            row.update({k: v / count for k, v in sums.items()})
            runlog.write(row)
            if bar is not None:
                bar.set_postfix({k: f"{v / count:.3g}" for k, v in sums.items()}, refresh=False)
            sums, count, timed, t_log = {}, 0, 0, now
        do_val = val_batch is not None and tr.val_every and step % int(tr.val_every) == 0
        do_roll = online and tr.rollout_every and step % int(tr.rollout_every) == 0 and int(tr.rollout_episodes) > 0
        if do_val or do_roll:
            vrow: dict = {"step": step}
            if do_val:
                vrow.update(validation_mse(policy, val_batch))
            if do_roll:
                vrow.update(_rollouts(policy, evaluate, int(tr.rollout_episodes), int(tr.rollout_seed)))
            vallog.write(vrow)
            for k in ("val_mse", "val_mse_exec", "success_rate", "mean_max_coverage"):
                if k in vrow:
                    runlog.scalar(f"val/{k}", vrow[k], step)
        if lg.checkpoint_every and step % int(lg.checkpoint_every) == 0 and step < steps:
            check_finite_losses(sums, step - count + 1, step, latest)  # the steps since the last log row
            so_far = seconds_before + time.perf_counter() - t_start
            window = log_window_state(sums, count)
            _save_run_checkpoint(latest, policy, sampler, cfg, step, so_far, window)
            if lg.keep_every and step % int(lg.keep_every) == 0:
                _save_run_checkpoint(ckpt_dir / f"step_{step:08d}.ckpt", policy, sampler, cfg, step, so_far, window)
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - t_start
    check_finite_losses(sums, last - count + 1, last, latest)
    window = log_window_state(sums, count)
    _save_run_checkpoint(latest, policy, sampler, cfg, last, seconds_before + train_seconds, window)
    if lg.keep_every and last % int(lg.keep_every) == 0 and last > start:
        _save_run_checkpoint(ckpt_dir / f"step_{last:08d}.ckpt", policy, sampler, cfg, last,
                             seconds_before + train_seconds, window)
    if last < steps:
        runlog.close()
        log(f"stopped at step {last:,} of {steps:,}; continue with --resume {run_dir}")
        return {}
    log(f"trained {steps - start:,} steps in {train_seconds / 60:.1f} min; checkpoint {latest}")

    report = {"run_dir": str(run_dir), "name": cfg.logging.get("name"), "kind": policy.kind,
              "task": cfg.task.get("name"), "dataset": str(cfg.task.dataset_path), "seed": seed, "steps": steps,
              "train_seconds": round(seconds_before + train_seconds, 1),
              "train_seconds_this_session": round(train_seconds, 1), "checkpoint": str(latest),
              "n_train_episodes": data.n_train_episodes, "n_val_episodes": data.n_val_episodes,
              "device": str(device), "online_rollouts": online, "backbone": policy.policy_cfg["backbone"],
              "env": task_env(cfg, data.env_args) if online else cfg.task.get("env"), "rows": []}
    policy.eval()
    settings = [False, True] if policy.kind == "ctm" else [False]
    for chained in settings:
        if chained:
            policy.enable_chaining()
        row = {"setting": policy.inference_setting(), "nfe": policy.nfe()}
        if val_batch is not None:
            row.update(validation_mse(policy, val_batch))
        if int(tr.latency_repeats) > 0:
            ms = measure_latency_ms(policy, int(tr.latency_repeats))
            row["ms_per_action"] = round(ms, 3)  # one batch-1 predict_action call
            row["ms_per_action_amortized"] = round(ms / policy.n_action_steps, 3)
        if online and int(tr.eval_episodes) > 0:
            row.update(_rollouts(policy, evaluate, int(tr.eval_episodes), int(tr.rollout_seed)))
        log("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
        report["rows"].append(row)
    policy.disable_chaining()
    runlog.close()
    _write_report(run_dir, report)
    return report


def format_report(report: dict) -> str:
    """Markdown table of a run's report rows."""
    def fmt(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "n/a"

    title = (f"{report['kind']} policy {report.get('name') or ''} on {Path(report['dataset']).name} "
             f"(seed {report['seed']}, {report['steps']:,} steps, {report['n_train_episodes']} train / "
             f"{report['n_val_episodes']} val episodes)")
    cov = any("mean_max_coverage" in r for r in report["rows"])
    header = ("| inference | NFE | val MSE (chunk) | val MSE (executed) | ms / predict_action (batch 1) "
              "| success (mean ± SE) |" + (" max coverage (mean ± SE) |" if cov else "") + " episodes |")
    lines = [title, "", header, "|---|---:|---:|---:|---:|---:|" + ("---:|" if cov else "") + "---:|"]
    for r in report["rows"]:
        success = (f"{r['success_rate']:.3f} ± {r['success_se']:.3f}" if "success_rate" in r else "n/a")
        coverage = ""
        if cov:
            coverage = (f" {r['mean_max_coverage']:.3f} ± {r.get('max_coverage_se', 0.0):.3f} |"
                        if "mean_max_coverage" in r else " n/a |")
        lines.append(f"| {r['setting']} | {r['nfe']} | {fmt(r.get('val_mse'), '.4f')} | "
                     f"{fmt(r.get('val_mse_exec'), '.4f')} | {fmt(r.get('ms_per_action'), '.2f')} | {success} |"
                     f"{coverage} {r.get('episodes', 0)} |")
    return "\n".join(lines)


def _write_report(run_dir: Path, report: dict) -> None:
    try:
        from ..runner.report import plot_learning_curve
        plot = plot_learning_curve(run_dir, run_dir / "learning_curve.png")
        if plot is not None:
            report["plots"] = {"learning_curve": str(plot)}
    except ImportError:  # matplotlib missing: the numbers are in log.csv
        pass
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (run_dir / "report.md").write_text(format_report(report) + "\n")


# ---------------------------------------------------------------------------- CLI entry point
def _is_imitation(cfg) -> bool:
    return isinstance(cfg, DictConfig) and "shape_meta" in cfg and "policy" in cfg


def is_imitation_config(name_or_path) -> bool:
    """Whether a config name/path (e.g. "imitation/edm_lift") is an imitation config (for CLI dispatch)."""
    try:
        return _is_imitation(_load_file(name_or_path))
    except ConfigError:
        return False


def is_imitation_run(run_dir) -> bool:
    """Whether run_dir/config.yaml belongs to an imitation run (for dispatching --resume)."""
    path = Path(run_dir) / "config.yaml"
    return path.is_file() and _is_imitation(OmegaConf.load(path))


def run_from_cli(config_name_or_path=None, overrides=(), run_dir=None, resume: bool = False,
                 progress: bool = True) -> int:
    """`cleandiffuser train --config-name imitation/edm_lift key=value ...`: 0 on success, 2 on a
    configuration / data error or a run directory another process trains in, 1 when the losses turned
    NaN/inf (each printed to stderr as one line). With resume=True the config comes from
    run_dir/config.yaml (overrides may extend it, e.g. training.steps=...)."""
    try:
        if resume:
            if run_dir is None:
                raise ConfigError("resuming needs the run directory")
            path = Path(run_dir) / "config.yaml"
            if not path.is_file():
                raise FileNotFoundError(f"cannot resume: {path} not found (is {run_dir} a run directory?)")
            cfg = apply_overrides(OmegaConf.load(path), list(overrides), source=str(path))
            check_imitation_config(cfg, str(path))
        else:
            if config_name_or_path is None:
                raise ConfigError("name a config, e.g. --config-name imitation/edm_lift")
            cfg = load_imitation_config(config_name_or_path, list(overrides))
        report = train_imitation(cfg, run_dir=run_dir, resume=resume, progress=progress)
    except (ConfigError, FileNotFoundError, FileExistsError, DatasetFormatError) as e:
        print(f"error: {e}", file=sys.stderr)  # FileExistsError includes RunLockedError: another process trains there
        return 2
    except NonFiniteLossError as e:  # the training diverged: a failed run, not a usage error
        print(f"error: {e}", file=sys.stderr)
        return 1
    if report:
        print("\n" + format_report(report))
        print(f"\nrun directory: {report['run_dir']}\ncheckpoint: {report['checkpoint']}")
    return 0
