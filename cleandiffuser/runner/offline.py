"""Train, checkpoint, resume and evaluate an offline-RL agent in its own run directory.

    run_dir/
      config.yaml            the resolved configuration (what `--resume` reads back)
      environment.json       versions, command line, git commit, host
      log.csv, tb/           training losses and throughput (CSV; TensorBoard when installed)
      checkpoints/           latest.ckpt (every checkpoint_every), step_XXXXXXXX.ckpt (every keep_every)
      eval/                  evals.csv (periodic), final/nfe_K/{episodes.csv, summary.json}
      report.json, report.md, learning_curve.png, score_vs_nfe.png

A run checkpoint is one safetensors file: the agent's parts, the observation normalizer, the batch
sampler's generator and the global RNG states, with the config as JSON metadata - loading it executes
no code, and resuming from it continues the exact same sequence of losses.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..algorithms import ALGORITHMS, Agent
from ..dataset import (
    D4RLMuJoCoTDDataset,
    GaussianNormalizer,
    TensorBatchSampler,
    qlearning_dataset,
    recorded_env_id,
)
from ..diffusion.base import DiffusionModel
from ..serialization import load_checkpoint, save_checkpoint
from .config import ConfigError, apply_overrides, check_config
from .distributed import init_distributed
from .guards import NonFiniteLossError, check_finite_losses, check_resume_config
from .lock import RunDirLock, RunLockedError
from .rundir import find_checkpoint, latest_checkpoint, remove_stale_temp_files

__all__ = ["train", "build_agent", "load_agent", "load_pretrained_critic", "load_pretrained_teacher", "evaluate_agent",
           "evaluate_run", "resolve_device", "save_run_checkpoint", "LoadedRun", "find_checkpoint",
           "NonFiniteLossError", "RunLockedError", "ACTING_ONLY_AGENT_KEYS"]

CHECKPOINT_FORMAT = "cleandiffuser-run/1"

# What a resume must keep as the checkpoint recorded it: the data, the seed, the algorithm and its whole `agent`
# section (networks, learning rates, losses: what shaped the weights) ...
RESUME_FIXED_KEYS = ("algo", "dataset", "normalize_reward", "clip_actions", "seed", "agent")
# ... except the agent settings that only choose actions at act() time (per algorithm: DQL/EDP's solver and
# sample_steps also draw the TD targets' next actions in training, so they stay fixed there)
ACTING_ONLY_AGENT_KEYS = {
    "iql": (),
    "idql": ("num_candidates", "weight_temperature", "selection", "sample_steps", "temperature"),
    "dql": ("num_candidates", "weight_temperature", "temperature", "act_ema"),
    "edp": ("num_candidates", "weight_temperature", "temperature", "act_ema"),
    "dbc": ("solver", "sample_steps", "temperature"),
    "fql": ("num_candidates", "temperature"),
}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device=cpu or device=auto")
    return torch.device(device)


def build_agent(cfg: DictConfig, obs_dim: int, act_dim: int, device: torch.device) -> Agent:
    """The agent `cfg.algo` from its `agent` section, with `cfg.precision` applied to its generative models."""
    agent_cls = ALGORITHMS[cfg.algo]
    try:
        agent = agent_cls.from_config(obs_dim, act_dim, OmegaConf.to_container(cfg.agent, resolve=True),
                                      steps=int(cfg.steps), device=device)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # an unexpected keyword or a bad value: name it as a config error
        raise ConfigError(f"agent section of the {cfg.algo} config: {e}") from e
    set_agent_precision(agent, cfg.precision)
    return agent


def set_agent_precision(agent: Agent, precision: str) -> None:
    for part in agent.parts().values():
        if isinstance(part, DiffusionModel):
            part.set_precision(precision)


# ---------------------------------------------------------------------------- data
def ensure_generated_dataset(source, say=print) -> None:
    """Make a dataset this library generates (e.g. halfcheetah-medium-cd-v0) if its file is missing, so
    `train` on a generated name works on a fresh machine; any other source is left to the loader."""
    from ..datagen.registry import dataset_path, parse_dataset_name

    try:
        parse_dataset_name(str(source))
    except ValueError:
        return
    if not dataset_path(str(source)).is_file():
        from ..datagen.generate import make_dataset
        say(f"{source} is not in {dataset_path(str(source)).parent} yet; generating it first")
        make_dataset(str(source), log=say, wait=True)  # another process making it: wait, then use its file


def check_eval_env(env_id: str | None, dataset) -> None:
    """Before training, not after it: the evaluation environment must be known and registered in gymnasium."""
    import gymnasium as gym

    if env_id is None:
        raise ConfigError(f"cannot tell which environment evaluates dataset {dataset!r}; set env=<gymnasium id> "
                          "or eval.episodes=0")
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise ConfigError(f"evaluation environment {env_id!r} (of dataset {dataset!r}) is not available here ({e}); "
                          "set env=<gymnasium id> or eval.episodes=0") from None


def load_training_data(cfg: DictConfig) -> tuple[D4RLMuJoCoTDDataset, str | None]:
    """The transition dataset and the gymnasium env id to evaluate on (None if unknown). Actions outside the
    actors' [-1, 1] are warned about (or clipped: `clip_actions`), and an environment that will evaluate the run
    (eval.episodes > 0) or is named (`env`) must have the data's observation and action sizes."""
    from ..env import env_id_for
    from .data_checks import check_action_bounds, check_env_fits_data

    data = qlearning_dataset(cfg.dataset)
    data["actions"] = check_action_bounds(data["actions"], cfg.dataset, clip=bool(cfg.get("clip_actions", False)))
    dataset = D4RLMuJoCoTDDataset(data, normalize_reward=bool(cfg.normalize_reward))
    env = cfg.get("env") or recorded_env_id(cfg.dataset)  # e.g. a Minari dataset's env_spec
    try:  # a family name (env=hopper, or the dataset's name) -> its gymnasium id; gymnasium ids pass through
        env = env_id_for(str(env if env is not None else cfg.dataset))
    except (KeyError, ValueError):
        pass
    evaluated = int(cfg.eval.episodes) > 0
    if env is not None and (evaluated or cfg.get("env")):  # before training, not at its end
        if evaluated:
            check_eval_env(env, cfg.dataset)
        check_env_fits_data(env, cfg.dataset, dataset.o_dim, dataset.a_dim, required=evaluated)
    return dataset, env


def check_pretrained_sources(cfg: DictConfig, resume: bool) -> None:
    """Before any work: agent.critic_path / agent.teacher_path, which a new run loads, name a run checkpoint of
    `cleandiffuser train` (or its run directory); ConfigError naming the key and the file otherwise. On resume
    the run's own checkpoint holds those parts and the paths are not read."""
    from ..serialization import CheckpointError

    for key in ("critic_path", "teacher_path"):
        path = cfg.agent.get(key) if not resume else None
        if path is None:
            continue
        try:
            ckpt = find_checkpoint(path)
            _, meta = load_checkpoint(ckpt)
        except (FileNotFoundError, CheckpointError) as e:
            raise ConfigError(f"agent.{key}={path}: {e}") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"agent.{key}={path}: {ckpt} is not a run checkpoint of `cleandiffuser train` "
                              f"(format {meta.get('format')!r}); give a run directory or its checkpoints/*.ckpt")


# ---------------------------------------------------------------------------- checkpoints
def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {"numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}
    return {"rng/torch": torch.get_rng_state()}, meta


def _set_rng_state(tensors, meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_run_checkpoint(path, agent: Agent, normalizer: GaussianNormalizer, sampler: TensorBatchSampler | None,
                        step: int, cfg: DictConfig, env_id: str | None, train_seconds: float = 0.0,
                        log_window: dict | None = None) -> None:
    """`train_seconds`: training wall time up to `step`, summed over every session of the run. `log_window`: the
    loss sums and step count of the log row in progress (log_window_state), so a resumed run logs the same row."""
    tensors, agent_meta = agent.checkpoint_state("agent/")
    tensors.update({f"normalizer/{k}": torch.as_tensor(v) for k, v in normalizer.state_dict().items()})
    if sampler is not None:
        tensors["sampler/generator"] = sampler.generator.get_state()
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    meta = {"format": CHECKPOINT_FORMAT, "step": step, "config": OmegaConf.to_container(cfg, resolve=True),
            "env_id": env_id, "agent": agent_meta, "rng": rng_meta, "obs_dim": agent.obs_dim,
            "act_dim": agent.act_dim, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "train_seconds": float(train_seconds)}
    if log_window is not None:
        meta["log_window"] = log_window
    save_checkpoint(path, tensors, meta)


def log_window_state(sums: Mapping[str, float], count: int) -> dict:
    """The log row in progress (loss sums over its `count` steps so far), as checkpoint metadata."""
    return {"sums": {k: float(v) for k, v in sums.items()}, "count": int(count)}


def restore_log_window(meta: Mapping) -> tuple[dict[str, float], int]:
    """(sums, count) of the log row a checkpoint was written in the middle of; empty for older checkpoints."""
    window = meta.get("log_window") or {}
    return {k: float(v) for k, v in window.get("sums", {}).items()}, int(window.get("count", 0))


class LoadedRun:
    """An agent restored from a run checkpoint, ready to act on raw observations."""

    def __init__(self, agent: Agent, normalizer: GaussianNormalizer, cfg: DictConfig, meta: dict, path: Path):
        self.agent, self.normalizer, self.cfg, self.meta, self.path = agent, normalizer, cfg, meta, path
        self.step = int(meta["step"])
        self.env_id = meta.get("env_id")

    @torch.no_grad()
    def act(self, obs) -> np.ndarray:
        """Actions for raw observations (obs_dim,) or (B, obs_dim) (numpy or torch)."""
        obs = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        single = obs.dim() == 1
        obs = self.normalizer.normalize(obs.view(1, -1) if single else obs).to(self.agent.device)
        act = self.agent.act(obs).float().cpu().numpy()
        return act[0] if single else act


def load_agent(path, device: str | None = None, overrides: list[str] | tuple = (),
               load_optimizer: bool = False) -> LoadedRun:
    """Rebuild the agent of a run directory or checkpoint: `load_agent("runs/x").act(obs)`.
    `overrides` (`agent.num_candidates=64`, ...) change settings that do not alter the weights."""
    ckpt = find_checkpoint(path)
    tensors, meta = load_checkpoint(ckpt)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{ckpt} is not a run checkpoint of `cleandiffuser train` (format {meta.get('format')!r}); "
                         "for a single model use cleandiffuser.diffusion.load_model")
    cfg = OmegaConf.create(meta["config"])
    apply_overrides(cfg, list(overrides), source=str(ckpt))
    if device is not None:
        cfg.device = device
    agent = build_agent(cfg, meta["obs_dim"], meta["act_dim"], resolve_device(cfg.device))
    agent.load_checkpoint_state(tensors, meta["agent"], prefix="agent/", load_optimizer=load_optimizer,
                                source=str(ckpt))
    normalizer = GaussianNormalizer.from_state_dict(_saved_normalizer_state(tensors))
    return LoadedRun(agent.eval(), normalizer, cfg, meta, ckpt)


def _saved_normalizer_state(tensors) -> dict[str, np.ndarray]:
    """The observation normalizer's state as save_run_checkpoint stored it."""
    return {k.split("/", 1)[1]: v.numpy() for k, v in tensors.items() if k.startswith("normalizer/")}


def _pretrained_run(key: str, path, normalizer: GaussianNormalizer, cfg: DictConfig):
    """(checkpoint, tensors, meta) of the run that `agent.<key>` points to (its directory or checkpoint). That
    run must have seen the same data as this one (the same observation normalizer): otherwise the part taken
    from it would read its inputs differently."""
    ckpt = find_checkpoint(path)
    tensors, meta = load_checkpoint(ckpt)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"agent.{key}: {ckpt} is not a run checkpoint of `cleandiffuser train`")
    theirs = _saved_normalizer_state(tensors)
    ours = normalizer.state_dict()
    same_data = set(theirs) == set(ours) and all(
        np.shape(theirs[k]) == np.shape(ours[k]) and np.allclose(theirs[k], ours[k], rtol=1e-5, atol=1e-6)
        for k in ours)
    if not same_data:
        raise ConfigError(f"agent.{key}: {ckpt} was trained on dataset {meta.get('config', {}).get('dataset')!r}, "
                          f"whose observation statistics differ from this run's dataset {str(cfg.dataset)!r}")
    return ckpt, tensors, meta


def load_pretrained_critic(agent: Agent, path, normalizer: GaussianNormalizer, cfg: DictConfig) -> int:
    """Copy the IQL critic of another run (`agent.critic_path`: its directory or checkpoint) into agent.critic;
    returns the step it was trained to. That run must have seen the same data, with the same reward scaling."""
    ckpt, tensors, meta = _pretrained_run("critic_path", path, normalizer, cfg)
    source = meta.get("config", {})
    entry = meta["agent"]["parts"].get("critic", {})
    if entry.get("kind") != "component" or entry["meta"].get("class") != "IQLCritic":
        raise ConfigError(f"agent.critic_path: {ckpt} (an {source.get('algo')!r} run) holds no IQL critic; "
                          "pretrain one with `cleandiffuser train iql --dataset ...`")
    if bool(source.get("normalize_reward")) != bool(cfg.normalize_reward):
        raise ConfigError(f"agent.critic_path: {ckpt} was trained with normalize_reward="
                          f"{source.get('normalize_reward')}, this run has normalize_reward={cfg.normalize_reward}")
    try:
        agent.critic.load_checkpoint_state(tensors, entry["meta"], prefix="agent/critic/", load_optimizer=False,
                                           source=f"agent.critic_path {ckpt}")
    except ValueError as e:  # different critic settings: name the config keys
        raise ConfigError(f"{e} (set agent.critic.* to the pretrained run's values)") from e
    return int(meta["step"])


def load_pretrained_teacher(agent: Agent, path, normalizer: GaussianNormalizer, cfg: DictConfig) -> int:
    """Copy the EDM actor of another run (`agent.teacher_path`: an `idql agent.actor=edm` run) into the actor
    that an actor=cd agent distills from its first update; returns the step it was trained to."""
    ckpt, tensors, meta = _pretrained_run("teacher_path", path, normalizer, cfg)
    source = meta.get("config", {})
    entry = meta["agent"]["parts"].get("actor", {})
    if entry.get("kind") != "component" or entry["meta"].get("class") != "ContinuousEDM":  # a CD run's is the student
        found = entry.get("meta", {}).get("class") if entry else None
        raise ConfigError(f"agent.teacher_path: {ckpt} (an {source.get('algo')!r} run, actor {found}) holds no "
                          "trained EDM actor; train one with `cleandiffuser train idql agent.actor=edm --dataset ...`")
    try:
        agent.actor.load_checkpoint_state(tensors, entry["meta"], prefix="agent/actor/", load_optimizer=False,
                                          source=f"agent.teacher_path {ckpt}")
    except (ValueError, RuntimeError) as e:  # another network size: torch's shape list, then the config keys
        raise ConfigError(f"agent.teacher_path {ckpt}: its EDM does not fit this actor ({e}); set "
                          "agent.actor_params.* to the pretrained run's values") from e
    return int(meta["step"])


# ---------------------------------------------------------------------------- logging
class RunLog:
    """log.csv (+ TensorBoard events when tensorboard is installed); on resume, rows past the
    checkpoint's step are dropped so the log continues seamlessly."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "log.csv"
        self.columns: list[str] | None = None
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            if rows:
                self.columns = list(rows[0].keys())
                self._rewrite(rows)
            else:
                self.path.unlink()
        elif self.path.exists():
            self.path.unlink()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
        except ImportError:
            pass

    def _rewrite(self, rows) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(row)
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None and math.isfinite(value):
            self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def environment_info() -> dict:
    import cleandiffuser

    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cleandiffuser": getattr(cleandiffuser, "__version__", "unknown"), "platform": platform.platform(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "command": " ".join(sys.argv),
            "openmp": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                       if k in os.environ}}
    for mod in ("gymnasium", "mujoco", "h5py"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
        except Exception as e:  # e.g. mujoco with a MUJOCO_GL backend whose library is missing: evaluation says more
            info[mod] = f"import failed: {type(e).__name__}: {e}"
    try:
        root = Path(__file__).resolve().parents[2]
        info["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def default_run_dir(cfg: DictConfig) -> Path:
    name = Path(str(cfg.dataset)).stem
    return Path("runs") / str(cfg.algo) / f"{name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------------- training
def train(cfg: DictConfig, run_dir=None, resume: bool = False, progress: bool = True, log=print,
          stop_at: int | None = None) -> dict:
    """Train `cfg` in `run_dir` (new, or an existing one to resume), evaluate, write the report.
    Returns the report dict (also written to run_dir/report.json). Under torchrun (WORLD_SIZE > 1)
    every rank trains on its own batches with averaged gradients; rank 0 logs, checkpoints and
    evaluates. `stop_at`: checkpoint and return after that step, as an interrupted run would (for
    time-boxed jobs; `resume=True` continues it); returns {} then.

    The run directory is locked while this process trains in it (rank 0 holds the lock): a second
    writer gets RunLockedError. A resume may only extend the run (ConfigError otherwise, see
    RESUME_FIXED_KEYS); a loss that turns NaN/inf stops training with NonFiniteLossError, leaving the
    last checkpoint as it was."""
    check_config(cfg)
    check_pretrained_sources(cfg, resume)
    device = resolve_device(cfg.device)
    ctx = init_distributed(str(device))
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    with RunDirLock(run_dir, enabled=ctx.is_main) as lock:
        return _train(cfg, run_dir, lock, ctx, device, resume, progress, log, stop_at)


def _train(cfg: DictConfig, run_dir: Path, lock: RunDirLock, ctx, device: torch.device, resume: bool, progress: bool,
           log, stop_at: int | None) -> dict:
    say = log if ctx.is_main else (lambda *_: None)
    lock.take_if_exists()  # before reading its checkpoint, so that no live writer replaces it meanwhile
    latest = latest_checkpoint(run_dir, resume)
    ckpt_dir = latest.parent
    if resume:  # checked before any data is made or loaded
        tensors, meta = load_checkpoint(latest)
        check_resume_config(meta["config"], OmegaConf.to_container(cfg, resolve=True), int(meta["step"]),
                            int(cfg.steps), "steps", RESUME_FIXED_KEYS,
                            [f"agent.{k}" for k in ACTING_ONLY_AGENT_KEYS.get(str(cfg.algo), ())], latest)

    if ctx.is_main:  # before seeding: generating data must not shift the training RNG streams
        ensure_generated_dataset(cfg.dataset, say)
    ctx.barrier()
    torch.manual_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed))
    random.seed(int(cfg.seed))
    dataset, env_id = load_training_data(cfg)
    if int(cfg.eval.episodes) > 0:
        check_eval_env(env_id, cfg.dataset)
    agent = build_agent(cfg, dataset.o_dim, dataset.a_dim, device)
    if cfg.get("compile", False):
        agent.compile_network()
    sampler = TensorBatchSampler(dataset.tensors(), int(cfg.batch_size), device=device,
                                 generator=int(cfg.seed) * 1000 + ctx.rank)
    normalizer = dataset.get_normalizer()
    start, seconds_before = 0, 0.0
    sums: dict[str, float] = {}  # loss sums of the log row in progress, over `count` steps
    count = 0
    critic_path = cfg.agent.get("critic_path")
    if critic_path is not None and not resume:  # on resume the run's checkpoint holds the critic
        critic_step = load_pretrained_critic(agent, critic_path, normalizer, cfg)
        say(f"critic: {critic_path} (trained {critic_step:,} steps), kept fixed")
    teacher_path = cfg.agent.get("teacher_path")
    if teacher_path is not None and not resume:  # on resume the run's checkpoint holds teacher and student
        teacher_step = load_pretrained_teacher(agent, teacher_path, normalizer, cfg)
        say(f"teacher: {teacher_path} (EDM trained {teacher_step:,} steps), distilled from the first update")
    if resume:
        seconds_before = float(meta.get("train_seconds", 0.0))
        sums, count = restore_log_window(meta)
        agent.load_checkpoint_state(tensors, meta["agent"], prefix="agent/", source=str(latest))
        if ctx.rank == 0:
            sampler.generator.set_state(tensors["sampler/generator"])
        _set_rng_state(tensors, meta["rng"])
        start = int(meta["step"])
        if ctx.enabled:  # other ranks: their own stream, reproducible from the step
            torch.manual_seed(int(cfg.seed) + 7919 * ctx.rank + start)
        say(f"resumed {run_dir} at step {start:,}")
    ctx.attach(agent)

    if ctx.is_main:
        lock.take()  # at the latest before the first write (it creates run_dir)
        latest_checkpoint(run_dir, resume)  # again under the lock: another run may have started here meanwhile
        remove_stale_temp_files(ckpt_dir)  # left by a writer killed mid-write; under the lock none is alive
        OmegaConf.save(cfg, run_dir / "config.yaml")
        info = environment_info() | {"world_size": ctx.world_size, "device": str(device)}
        (run_dir / "environment.json").write_text(json.dumps(info, indent=1))
    runlog = RunLog(run_dir, start if resume else None) if ctx.is_main else None

    steps = int(cfg.steps)
    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc=f"{cfg.algo} {Path(str(cfg.dataset)).stem}", unit="step",
                   dynamic_ncols=True, smoothing=0.05, mininterval=0.5 if sys.stderr.isatty() else 30.0)
    timed, t_log, t_start = 0, time.perf_counter(), time.perf_counter()  # updates/s: this session's steps only
    agent.train()
    last = steps if stop_at is None else min(steps, int(stop_at))
    for step in range(start + 1, last + 1):
        out = agent.update(sampler.sample())
        ctx.attach(agent)  # an agent may add an optimizer mid-run (IDQL's distillation phase)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)  # a NaN or inf on any step stays in the sum
        count += 1
        timed += 1
        if bar is not None:
            bar.update(1)
        if ctx.is_main and cfg.log_every and step % int(cfg.log_every) == 0:
            check_finite_losses(sums, step - count + 1, step, latest)
            now = time.perf_counter()
            row = {"step": step, "wall_s": round(seconds_before + now - t_start, 2),
                   "updates_per_s": round(timed / (now - t_log), 2)}
            row.update({k: v / count for k, v in sums.items()})
            runlog.write(row)
            if bar is not None:
                bar.set_postfix({k: f"{v / count:.3g}" for k, v in sums.items()}, refresh=False)
            sums, count, timed, t_log = {}, 0, 0, now
        if ctx.is_main and cfg.checkpoint_every and step % int(cfg.checkpoint_every) == 0 and step < steps:
            check_finite_losses(sums, step - count + 1, step, latest)  # the steps since the last log row
            so_far = seconds_before + time.perf_counter() - t_start
            window = log_window_state(sums, count)
            save_run_checkpoint(latest, agent, normalizer, sampler, step, cfg, env_id, so_far, window)
            if cfg.keep_every and step % int(cfg.keep_every) == 0:
                save_run_checkpoint(ckpt_dir / f"step_{step:08d}.ckpt", agent, normalizer, sampler, step, cfg, env_id,
                                    so_far, window)
        if ctx.is_main and cfg.eval_every and step % int(cfg.eval_every) == 0 and step < steps:
            _periodic_eval(agent, normalizer, cfg, env_id, run_dir, step, runlog, say)
            agent.train()
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - t_start
    ctx.check_in_sync(agent)
    ctx.close()
    if not ctx.is_main:
        return {}
    check_finite_losses(sums, last - count + 1, last, latest)
    save_run_checkpoint(latest, agent, normalizer, sampler, last, cfg, env_id, seconds_before + train_seconds,
                        log_window_state(sums, count))
    if last < steps:
        runlog.close()
        say(f"stopped at step {last:,} of {steps:,}; continue with --resume {run_dir}")
        return {}
    say(f"trained {steps - start:,} steps in {train_seconds / 60:.1f} min; checkpoint {latest}")
    report = {"run_dir": str(run_dir), "algo": cfg.algo, "dataset": str(cfg.dataset), "env_id": env_id,
              "seed": int(cfg.seed), "steps": steps, "train_seconds": round(seconds_before + train_seconds, 1),
              "train_seconds_this_session": round(train_seconds, 1),
              "checkpoint": str(latest), "rows": []}
    if int(cfg.eval.episodes) > 0:
        report["rows"] = evaluate_agent(agent, normalizer, cfg, env_id, run_dir / "eval" / "final", say=say)
    runlog.close()
    from .report import write_report
    write_report(run_dir, report)
    return report


def _periodic_eval(agent, normalizer, cfg, env_id, run_dir, step, runlog, say) -> None:
    rows = evaluate_agent(agent, normalizer, cfg, env_id, run_dir / "eval" / f"step_{step:08d}",
                          sample_steps=_sample_steps_list(cfg.eval.sample_steps)[:1], measure_latency=False, say=say)
    path = run_dir / "eval" / "evals.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["step", "sample_steps", "score_mean", "score_se", "return_mean"])
        for r in rows:
            w.writerow([step, r["sample_steps"], r["score_mean"], r["score_se"], r["return_mean"]])
            runlog.scalar("eval/normalized_score", r["score_mean"], step)


# ---------------------------------------------------------------------------- evaluation
def _sample_steps_list(value) -> list:
    """eval.sample_steps as a list: null -> [None] (the agent's default), K -> [K]; [] -> [None]."""
    if value is None:
        return [None]
    if isinstance(value, int):
        return [value]
    return list(value) or [None]


@torch.no_grad()
def action_latency_ms(agent: Agent, obs_dim: int, repeats: int = 30) -> float:
    """Median wall time of one act() call on one observation (ms)."""
    obs = torch.zeros(1, obs_dim, device=agent.device)
    agent.act(obs)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        agent.act(obs)
        if agent.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def evaluate_agent(agent: Agent, normalizer, cfg: DictConfig, env_id: str, out_dir, sample_steps=None,
                   measure_latency: bool = True, video: bool = False, say=print) -> list[dict]:
    """Score the agent once per entry of `sample_steps` (default cfg.eval.sample_steps): one row each
    with the D4RL normalized score mean ± SE over all episodes of all eval seeds and the ms per action
    (`video`: and its first episode rendered, the row's "video")."""
    from ..env.evaluation import evaluate, mean_se

    agent.eval()
    rows = []
    requested = _sample_steps_list(cfg.eval.sample_steps if sample_steps is None else sample_steps)
    default_steps = getattr(agent, "sample_steps", None)
    for k in requested:
        if k is not None:
            if not hasattr(agent, "sample_steps"):
                raise ConfigError(f"{type(agent).__name__} has no sample_steps setting; use eval.sample_steps=null")
            agent.sample_steps = int(k)
        steps_used = getattr(agent, "sample_steps", None)

        def policy(obs):
            return agent.act(torch.as_tensor(obs, device=agent.device))

        res = evaluate(policy, env_id, n_envs=int(cfg.eval.n_envs), n_episodes=int(cfg.eval.episodes),
                       seeds=list(cfg.eval.seeds), obs_normalizer=normalizer,
                       out_dir=Path(out_dir) / f"steps_{steps_used}", dataset_name=env_id,
                       progress=False, video=video)
        mean, se = mean_se(res.scores)
        row = {"sample_steps": steps_used, "nfe": _nfe(agent), "episodes": int(res.scores.size),
               "eval_seeds": list(res.seeds), "score_mean": mean, "score_se": se,
               "return_mean": float(np.mean(res.returns)), "eval_seconds": round(res.wall_time, 1)}
        if video:
            row["video"] = res.video_path
        if measure_latency:
            row["ms_per_action"] = round(action_latency_ms(agent, agent.obs_dim), 3)
        say(f"  sample_steps={steps_used}: normalized score {mean:.1f} ± {se:.1f} "
            f"({row['episodes']} episodes, return {row['return_mean']:.0f})")
        rows.append(row)
    if default_steps is not None:
        agent.sample_steps = default_steps
    return rows


def _evaluation_env(run: LoadedRun) -> str:
    """The gymnasium id to evaluate a loaded run in: its recorded one, or the `env=` override given to load_agent
    when the run's config differs there, checked to exist and to have the run's observation and action sizes."""
    import gymnasium as gym

    from ..env import env_id_for
    from .data_checks import env_sizes

    requested = run.cfg.get("env")
    if requested is None or requested == run.meta["config"].get("env"):
        if run.env_id is None:
            raise ConfigError(f"{run.path} does not record an environment to evaluate on; pass env=<gymnasium id>")
        return run.env_id
    try:  # a family name (env=hopper) -> its gymnasium id, as in training
        env_id = env_id_for(str(requested))
    except (KeyError, ValueError):
        env_id = str(requested)
    try:
        obs_dim, act_dim = env_sizes(env_id)
    except gym.error.Error as e:
        raise ConfigError(f"env={requested}: {env_id!r} is not an environment available here ({e})") from None
    if (obs_dim, act_dim) != (run.agent.obs_dim, run.agent.act_dim):
        raise ConfigError(f"env={requested}: {env_id} has observations ({obs_dim},) and actions ({act_dim},), but "
                          f"{run.path} was trained for observations ({run.agent.obs_dim},) and actions "
                          f"({run.agent.act_dim},) (it records {run.env_id}); evaluate it in an environment with "
                          "those sizes")
    return env_id


def _nfe(agent: Agent):
    """Network evaluations per action draw, when the agent can tell."""
    fn = getattr(agent, "nfe", None)
    return fn() if callable(fn) else None


def evaluate_run(path, sample_steps=None, episodes: int | None = None, seeds=None, n_envs: int | None = None,
                 device: str | None = None, overrides: list[str] | tuple = (), out_dir=None, video: bool = False,
                 say=print) -> dict:
    """`cleandiffuser eval`: score a run directory or checkpoint again (other sample steps, more episodes;
    `video`: each row's first episode rendered into its steps_<K> folder). `env=ID` among the overrides
    evaluates in that environment instead of the run's (its observation and action sizes must be the run's);
    its results go to eval/step_<N>-<ID>."""
    run = load_agent(path, device=device, overrides=overrides)
    cfg = run.cfg
    env_id = _evaluation_env(run)
    if sample_steps is not None:
        cfg.eval.sample_steps = list(sample_steps)
    if episodes is not None:
        cfg.eval.episodes = int(episodes)
    if seeds is not None:
        cfg.eval.seeds = list(seeds)
    if n_envs is not None:
        cfg.eval.n_envs = int(n_envs)
    run_dir = run.path.parent.parent if run.path.parent.name == "checkpoints" else run.path.parent
    other_env = "" if env_id == run.env_id else f"-{env_id}"
    out = Path(out_dir) if out_dir is not None else run_dir / "eval" / f"step_{run.step:08d}{other_env}"
    say(f"evaluating {run.path} (step {run.step:,}) on {env_id}")
    rows = evaluate_agent(run.agent, run.normalizer, cfg, env_id, out, video=video, say=say)
    report = {"run_dir": str(run_dir), "checkpoint": str(run.path), "algo": cfg.algo, "dataset": str(cfg.dataset),
              "env_id": env_id, "seed": int(cfg.seed), "steps": run.step, "rows": rows}
    (out).mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return report
