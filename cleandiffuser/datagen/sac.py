"""Compact Soft Actor-Critic for training D4RL-style behaviour policies, with exact resume.

Algorithm (Haarnoja et al. 2018, v2): tanh-Gaussian actor, twin Q critics with target
networks updated by Polyak averaging ``target <- (1 - tau) * target + tau * online``,
automatic entropy tuning towards ``-act_dim``; 256x256 ReLU MLPs, Adam lr 3e-4,
batch 256, gamma 0.99, tau 0.005, uniform random actions for the first ``warmup_steps``
env steps and one gradient update per env step afterwards.

Output directory of :func:`train_sac`::

    config.json                 SAC config (checked on resume)
    eval.csv                    one row per snapshot: deterministic-policy evaluation
    snapshots/actor_XXXXXXXXX.safetensors   actor weights at env-step milestones
    buffer/chunk_XXXXXXXXX.npz  every transition ever collected, in chunks (episode
                                boundaries: terminated / truncated flags)
    checkpoints/step_XXXXXXXXX/ weights.safetensors (nets, optimizers, torch RNG),
                                state.json (counters, numpy RNGs, env RNG),
                                arrays.npz (MuJoCo state, current obs, partial chunk)
    latest.json                 which checkpoint is current (replaced atomically)
    selection.json              medium / expert snapshots (see select_snapshots)

Running :func:`train_sac` again on the same directory resumes from ``latest.json`` and
continues bit-for-bit as if never interrupted (same thread count assumed). No pickle:
tensors are safetensors, arrays npz (loaded with ``allow_pickle=False``), the rest JSON.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..serialization import atomic_path
from .policy import SNAPSHOT_FORMAT, NumpyActor, atomic_save_safetensors, save_actor_snapshot

__all__ = [
    "SACConfig",
    "Actor",
    "TwinQ",
    "SAC",
    "ReplayBuffer",
    "train_sac",
    "evaluate",
    "read_eval_csv",
    "select_snapshots",
    "load_replay_transitions",
]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
EVAL_COLUMNS = [
    "env_steps", "updates", "eval_return_mean", "eval_return_std", "eval_length_mean",
    "normalized_score", "train_return_recent", "alpha", "elapsed_s", "snapshot",
]


@dataclass
class SACConfig:
    """Everything that determines the training trajectory (checked on resume)."""

    env_id: str = "HalfCheetah-v5"
    seed: int = 0
    hidden: tuple = (256, 256)
    lr: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    warmup_steps: int = 10_000
    buffer_size: int = 1_000_000
    init_alpha: float = 1.0
    target_entropy: Optional[float] = None  # None: -act_dim
    chunk_size: int = 10_000

    def to_json(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SACConfig":
        d = dict(d)
        d["hidden"] = tuple(d["hidden"])
        return cls(**d)


# --------------------------------------------------------------------------- networks
def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Tanh-Gaussian policy: MLP obs -> (mean, log_std) of the pre-tanh Gaussian."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(256, 256)):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, tuple(hidden)
        self.log_std_min, self.log_std_max = LOG_STD_MIN, LOG_STD_MAX
        self.net = _mlp([obs_dim, *hidden, 2 * act_dim])

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        return mu, log_std.clamp(self.log_std_min, self.log_std_max)

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized action in (-1, 1) and its log-probability (tanh-corrected)."""
        mu, log_std = self(obs)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        u = mu + log_std.exp() * eps
        a = torch.tanh(u)
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), numerically stable
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return a, log_prob


class _EnsembleLinear(nn.Module):
    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # same range as nn.Linear's default init
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, B, d_in) -> (n, B, d_out)
        return torch.baddbmm(self.bias, x, self.weight)


class TwinQ(nn.Module):
    """Two independent Q MLPs evaluated together as one batched ensemble: (obs, act) -> (2, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(256, 256), n: int = 2):
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden, 1]
        self.n = n
        self.layers = nn.ModuleList(_EnsembleLinear(n, sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1)
        x = x.unsqueeze(0).expand(self.n, *x.shape)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x.squeeze(-1)


class SAC:
    """SAC agent: networks, optimizers and the torch generator used for all its sampling."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig):
        self.cfg = cfg
        self.obs_dim, self.act_dim = obs_dim, act_dim
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.actor = Actor(obs_dim, act_dim, cfg.hidden)
            self.critic = TwinQ(obs_dim, act_dim, cfg.hidden)
            self.critic_target = TwinQ(obs_dim, act_dim, cfg.hidden)
        self.critic_target.load_state_dict(self.critic.state_dict())
        for p in self.critic_target.parameters():
            p.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.init_alpha), requires_grad=True)
        self.target_entropy = float(-act_dim if cfg.target_entropy is None else cfg.target_entropy)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.updates = 0

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Stochastic action in (-1, 1) for one observation (training data collection)."""
        a, _ = self.actor.sample(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0), self.generator)
        return a[0].numpy()

    def update(self, batch: dict) -> dict:
        obs, act, rew = batch["obs"], batch["act"], batch["rew"]
        next_obs, term = batch["next_obs"], batch["terminated"]
        alpha = self.log_alpha.detach().exp()

        # critic: y = r + gamma * (1 - terminated) * (min_j Q'_j(s', a') - alpha * log pi(a'|s'))
        with torch.no_grad():
            a2, logp2 = self.actor.sample(next_obs, self.generator)
            q_next = self.critic_target(next_obs, a2).min(dim=0).values
            y = rew + self.cfg.gamma * (1.0 - term) * (q_next - alpha * logp2)
        q = self.critic(obs, act)
        critic_loss = (q - y.unsqueeze(0)).pow(2).mean(dim=1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        # actor: minimize alpha * log pi - min_j Q_j (critic weights frozen)
        for p in self.critic.parameters():
            p.requires_grad_(False)
        a_pi, logp = self.actor.sample(obs, self.generator)
        q_pi = self.critic(obs, a_pi).min(dim=0).values
        actor_loss = (alpha * logp - q_pi).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        for p in self.critic.parameters():
            p.requires_grad_(True)

        # temperature
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        # Polyak averaging: target <- (1 - tau) * target + tau * online
        with torch.no_grad():
            for pt, p in zip(self.critic_target.parameters(), self.critic.parameters()):
                pt.mul_(1.0 - self.cfg.tau).add_(p, alpha=self.cfg.tau)
        self.updates += 1
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "alpha": alpha.item()}

    # ---- exact state
    _OPTS = ("actor_opt", "critic_opt", "alpha_opt")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}
        for name in ("actor", "critic", "critic_target"):
            for k, v in getattr(self, name).state_dict().items():
                t[f"{name}.{k}"] = v
        t["log_alpha"] = self.log_alpha.detach().reshape(1)
        for name in self._OPTS:
            for i, st in getattr(self, name).state_dict()["state"].items():
                for k, v in st.items():
                    t[f"{name}.{i}.{k}"] = torch.as_tensor(v).reshape(-1) if k == "step" else v
        t["torch_generator"] = self.generator.get_state()
        return t

    def load_state_tensors(self, t: dict[str, torch.Tensor]) -> None:
        for name in ("actor", "critic", "critic_target"):
            pre = name + "."
            getattr(self, name).load_state_dict({k[len(pre):]: v for k, v in t.items() if k.startswith(pre)})
        with torch.no_grad():
            self.log_alpha.copy_(t["log_alpha"].reshape(()))
        for name in self._OPTS:
            opt = getattr(self, name)
            sd = opt.state_dict()
            n_params = len(sd["param_groups"][0]["params"])
            state = {}
            for i in range(n_params):
                pre = f"{name}.{i}."
                entry = {k[len(pre):]: v for k, v in t.items() if k.startswith(pre)}
                if entry:
                    entry["step"] = entry["step"].reshape(())
                    state[i] = entry
            sd["state"] = state
            opt.load_state_dict(sd)
        self.generator.set_state(t["torch_generator"])


# --------------------------------------------------------------------------- replay buffer
_FIELDS = ("obs", "act", "rew", "next_obs", "terminated", "truncated")


def _atomic_npz(path: Path, arrays: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_npz(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class ReplayBuffer:
    """Ring buffer in numpy whose complete history is also written to ``chunk_dir`` in
    chunks of ``chunk_size`` transitions (global indices ``[s, s + chunk_size)``)."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, chunk_dir, chunk_size: int):
        if capacity < chunk_size:
            raise ValueError("buffer capacity must be at least the chunk size")
        self.capacity, self.chunk_size = int(capacity), int(chunk_size)
        self.chunk_dir = Path(chunk_dir)
        self.data = {
            "obs": np.zeros((capacity, obs_dim), np.float32),
            "act": np.zeros((capacity, act_dim), np.float32),
            "rew": np.zeros((capacity,), np.float32),
            "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "terminated": np.zeros((capacity,), bool),
            "truncated": np.zeros((capacity,), bool),
        }
        self.total = 0  # transitions ever added

    def __len__(self) -> int:
        return min(self.total, self.capacity)

    def add(self, obs, act, rew, next_obs, terminated, truncated) -> None:
        i = self.total % self.capacity
        d = self.data
        d["obs"][i], d["act"][i], d["rew"][i] = obs, act, rew
        d["next_obs"][i], d["terminated"][i], d["truncated"][i] = next_obs, terminated, truncated
        self.total += 1
        if self.total % self.chunk_size == 0:
            start = self.total - self.chunk_size
            _atomic_npz(self.chunk_path(start), self._range(start, self.total))

    def chunk_path(self, start: int) -> Path:
        return self.chunk_dir / f"chunk_{start:09d}.npz"

    def _range(self, start: int, stop: int) -> dict:
        idx = np.arange(start, stop) % self.capacity
        return {k: v[idx] for k, v in self.data.items()}

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict:
        idx = rng.integers(0, len(self), size=batch_size)
        out = {k: torch.from_numpy(v[idx]) for k, v in self.data.items() if k != "truncated"}
        out["terminated"] = out["terminated"].float()
        return out

    def partial_chunk(self) -> dict:
        """Transitions after the last complete chunk (saved with each checkpoint)."""
        return self._range(self.total - self.total % self.chunk_size, self.total)

    def restore(self, total: int, partial: dict) -> None:
        """Refill the ring with the last ``capacity`` transitions of a run that had added
        ``total``: complete chunks from disk plus the checkpoint's partial chunk."""
        c = self.chunk_size
        full_end = total - total % c
        first = max(0, total - self.capacity)
        self.total = 0
        for start in range((first // c) * c, full_end, c):
            chunk = _load_npz(self.chunk_path(start))
            lo = max(first, start)
            self._put(lo, {k: v[lo - start:] for k, v in chunk.items()})
        self._put(full_end, partial)
        self.total = total

    def _put(self, start: int, arrays: dict) -> None:
        n = len(arrays["rew"])
        idx = np.arange(start, start + n) % self.capacity
        for k in _FIELDS:
            self.data[k][idx] = arrays[k]


def load_replay_transitions(run_dir, stop: int) -> dict:
    """The first ``stop`` transitions ever collected by the run in ``run_dir`` (from its
    buffer chunks plus, if needed, the partial chunk of its latest checkpoint) as arrays
    ``obs, act, rew, next_obs, terminated, truncated``."""
    run_dir = Path(run_dir)
    cfg = SACConfig.from_json(json.loads((run_dir / "config.json").read_text()))
    c = cfg.chunk_size
    parts = []
    for start in range(0, stop - stop % c, c):
        parts.append(_load_npz(run_dir / "buffer" / f"chunk_{start:09d}.npz"))
    rest = stop % c
    if rest:
        start = stop - rest
        path = run_dir / "buffer" / f"chunk_{start:09d}.npz"
        if path.is_file():
            chunk = _load_npz(path)
        else:
            latest = _read_latest(run_dir)
            if latest is None or latest["step"] < stop:
                raise ValueError(f"run {run_dir} has not collected {stop} transitions yet")
            chunk = {k[len("buffer_"):]: v for k, v in _load_npz(run_dir / latest["dir"] / "arrays.npz").items() if k.startswith("buffer_")}
        parts.append({k: v[:rest] for k, v in chunk.items()})
    if not parts:
        raise ValueError("no transitions requested")
    return {k: np.concatenate([p[k] for p in parts]) for k in _FIELDS}


# --------------------------------------------------------------------------- evaluation
def evaluate(actor: NumpyActor, env_id: str, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of ``episodes`` deterministic-policy episodes; episode ``k``
    starts from ``reset(seed=seed + k)`` (same start states for every snapshot)."""
    from ..env import make_env

    env = make_env(env_id)
    rets, lens = [], []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        ret, n, done = 0.0, 0, False
        while not done:
            obs, r, term, trunc, _ = env.step(actor.act(obs))
            ret += float(r)
            n += 1
            done = term or trunc
        rets.append(ret)
        lens.append(n)
    env.close()
    return np.asarray(rets), np.asarray(lens)


def _torch_actor_to_numpy(actor: Actor, low, high) -> NumpyActor:
    meta = {
        "format": SNAPSHOT_FORMAT, "obs_dim": str(actor.obs_dim), "act_dim": str(actor.act_dim),
        "hidden": json.dumps(list(actor.hidden)), "log_std_min": repr(actor.log_std_min),
        "log_std_max": repr(actor.log_std_max), "action_low": json.dumps([float(x) for x in low]),
        "action_high": json.dumps([float(x) for x in high]),
    }
    return NumpyActor({k: v.detach().numpy() for k, v in actor.state_dict().items()}, meta)


# --------------------------------------------------------------------------- run files
def _atomic_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def _read_latest(run_dir: Path) -> Optional[dict]:
    p = Path(run_dir) / "latest.json"
    return json.loads(p.read_text()) if p.is_file() else None


def read_eval_csv(run_dir) -> list[dict]:
    """Rows of ``eval.csv`` with numeric fields converted."""
    p = Path(run_dir) / "eval.csv"
    if not p.is_file():
        return []
    rows = []
    with open(p, newline="") as f:
        for r in csv.DictReader(f):
            out = {}
            for k, v in r.items():
                if k == "snapshot":
                    out[k] = v
                elif k in ("env_steps", "updates"):
                    out[k] = int(v)
                else:
                    out[k] = float(v) if v not in ("", None) else float("nan")
            rows.append(out)
    return rows


def _rewrite_eval_csv(path: Path, max_step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be redone)."""
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["env_steps"]) <= max_step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EVAL_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_text(path, buf.getvalue())


def _json_rng(g: np.random.Generator) -> dict:
    return g.bit_generator.state


def _rng_from_json(state: dict) -> np.random.Generator:
    g = np.random.Generator(getattr(np.random, state["bit_generator"])())
    g.bit_generator.state = state
    return g


# --------------------------------------------------------------------------- training loop
def train_sac(
    out_dir,
    cfg: SACConfig | None = None,
    total_steps: int = 1_000_000,
    checkpoint_every: int = 10_000,
    snapshot_every: int = 20_000,
    eval_episodes: int = 5,
    keep_checkpoints: int = 2,
    log_every: int = 5_000,
    log: Callable[[str], None] | None = print,
    callback: Callable[[int], None] | None = None,
) -> dict:
    """Train SAC for ``total_steps`` env steps, writing the layout described in the
    module docstring; resumes exactly when ``out_dir`` holds a checkpoint.

    ``cfg`` may be None when resuming (the stored config is used); a given ``cfg`` must
    equal the stored one. ``callback(env_steps)`` is called after every env step (tests
    use it to simulate a crash). Returns a summary dict.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock_run_dir(out)
    try:
        return _train(out, cfg, total_steps, checkpoint_every, snapshot_every, eval_episodes, keep_checkpoints,
                      log_every, log, callback)
    finally:
        lock.close()


def _lock_run_dir(out: Path):
    """Exclusive lock on ``out/.lock`` so two processes never train into one directory."""
    f = open(out / ".lock", "a")
    try:
        import fcntl

        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - non-POSIX
        pass
    except OSError:
        f.close()
        raise RuntimeError(f"another process is training in {out} (lock {out / '.lock'} is held)") from None
    return f


def _train(out, cfg, total_steps, checkpoint_every, snapshot_every, eval_episodes, keep_checkpoints,
           log_every, log, callback) -> dict:
    from ..env import get_env_state, make_env, normalized_score, set_env_state

    cfg_path = out / "config.json"
    if cfg_path.is_file():
        stored = SACConfig.from_json(json.loads(cfg_path.read_text()))
        if cfg is not None and cfg.to_json() != stored.to_json():
            diff = {k: (stored.to_json()[k], v) for k, v in cfg.to_json().items() if stored.to_json()[k] != v}
            raise ValueError(f"{out} holds a run with a different config (stored, given): {diff}; use another --out")
        cfg = stored
    else:
        cfg = cfg or SACConfig()
        _atomic_text(cfg_path, json.dumps(cfg.to_json(), indent=2) + "\n")
    say = log or (lambda s: None)

    env = make_env(cfg.env_id, seed=cfg.seed)
    obs = env.cd_first_obs
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
    unit_box = bool(np.all(low == -1) and np.all(high == 1))
    agent = SAC(obs_dim, act_dim, cfg)
    buffer = ReplayBuffer(obs_dim, act_dim, cfg.buffer_size, out / "buffer", cfg.chunk_size)
    seeds = np.random.SeedSequence(cfg.seed).spawn(2)
    rng_warmup, rng_batch = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1])
    step, ep_return, ep_length, episodes, recent, elapsed = 0, 0.0, 0, 0, [], 0.0

    latest = _read_latest(out)
    if latest is not None:
        from safetensors.torch import load_file

        ck = out / latest["dir"]
        st = json.loads((ck / "state.json").read_text())
        arrays = _load_npz(ck / "arrays.npz")
        agent.load_state_tensors(load_file(str(ck / "weights.safetensors")))
        agent.updates = st["updates"]
        rng_warmup, rng_batch = _rng_from_json(st["rng_warmup"]), _rng_from_json(st["rng_batch"])
        set_env_state(env, st["env"], arrays["env_sim_state"])
        obs = arrays["obs"]
        step, ep_return, ep_length = st["env_steps"], st["ep_return"], st["ep_length"]
        episodes, recent, elapsed = st["episodes"], st["recent_returns"], st["elapsed_s"]
        buffer.restore(step, {k[len("buffer_"):]: v for k, v in arrays.items() if k.startswith("buffer_")})
        _rewrite_eval_csv(out / "eval.csv", step)
        say(f"[sac] resumed {out} at env step {step:,} ({agent.updates:,} updates)")
    else:
        _rewrite_eval_csv(out / "eval.csv", -1)
        say(f"[sac] new run in {out}: {cfg.env_id}, seed {cfg.seed}, {total_steps:,} env steps")

    def checkpoint() -> None:
        info, sim = get_env_state(env)
        state = {
            "env_steps": step, "updates": agent.updates, "ep_return": ep_return, "ep_length": ep_length,
            "episodes": episodes, "recent_returns": recent, "elapsed_s": elapsed + (time.perf_counter() - t0),
            "rng_warmup": _json_rng(rng_warmup), "rng_batch": _json_rng(rng_batch), "env": info,
        }
        arrays = {"env_sim_state": sim, "obs": np.asarray(obs)}
        arrays.update({f"buffer_{k}": v for k, v in buffer.partial_chunk().items()})
        name = f"step_{step:09d}"
        (out / "checkpoints").mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out / "checkpoints"))
        try:
            atomic_save_safetensors(agent.state_tensors(), tmp / "weights.safetensors")
            _atomic_text(tmp / "state.json", json.dumps(state) + "\n")
            _atomic_npz(tmp / "arrays.npz", arrays)
            final = out / "checkpoints" / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _atomic_text(out / "latest.json", json.dumps({"step": step, "dir": f"checkpoints/{name}"}) + "\n")
        done = sorted(p for p in (out / "checkpoints").glob("step_*") if p.is_dir())
        for p in done[:-keep_checkpoints] if keep_checkpoints > 0 else []:
            shutil.rmtree(p, ignore_errors=True)

    def snapshot_and_eval() -> None:
        rel = f"snapshots/actor_{step:09d}.safetensors"
        save_actor_snapshot(agent.actor, out / rel, cfg.env_id, step, low, high)
        rets, lens = (evaluate(_torch_actor_to_numpy(agent.actor, low, high), cfg.env_id, eval_episodes, 10_000 + 100 * cfg.seed)
                      if eval_episodes > 0 else (np.array([np.nan]), np.array([np.nan])))
        try:
            score = normalized_score(cfg.env_id, float(rets.mean()))
        except KeyError:
            score = float("nan")
        row = {
            "env_steps": step, "updates": agent.updates, "eval_return_mean": f"{rets.mean():.3f}",
            "eval_return_std": f"{rets.std():.3f}", "eval_length_mean": f"{lens.mean():.1f}",
            "normalized_score": f"{score:.2f}", "train_return_recent": f"{np.mean(recent) if recent else float('nan'):.3f}",
            "alpha": f"{agent.alpha:.5f}", "elapsed_s": f"{elapsed + time.perf_counter() - t0:.1f}", "snapshot": rel,
        }
        with open(out / "eval.csv", "a", newline="") as f:
            csv.DictWriter(f, fieldnames=EVAL_COLUMNS, lineterminator="\n").writerow(row)
        say(f"[sac] step {step:,}: eval return {rets.mean():.1f} +- {rets.std():.1f} (normalized {score:.1f}), "
            f"alpha {agent.alpha:.4f}, snapshot {rel}")

    t0 = time.perf_counter()
    t_log, s_log = t0, step
    while step < total_steps:
        if step < cfg.warmup_steps:
            action = rng_warmup.uniform(low, high).astype(np.float32)
        else:
            a = agent.act(obs)
            action = a if unit_box else (low + (a + 1.0) * 0.5 * (high - low)).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        a_store = action if unit_box else (2.0 * (action - low) / (high - low) - 1.0).astype(np.float32)
        buffer.add(obs, a_store, reward, next_obs, terminated, truncated)
        ep_return += float(reward)
        ep_length += 1
        if terminated or truncated:
            episodes += 1
            recent = (recent + [ep_return])[-10:]
            ep_return, ep_length = 0.0, 0
            obs, _ = env.reset()
        else:
            obs = next_obs
        step += 1
        if step >= cfg.warmup_steps:
            agent.update(buffer.sample(rng_batch, cfg.batch_size))
        if step % snapshot_every == 0 or step == total_steps:
            snapshot_and_eval()
        if step % checkpoint_every == 0 or step == total_steps:
            checkpoint()
        if log_every and step % log_every == 0:
            now = time.perf_counter()
            say(f"[sac] step {step:,}/{total_steps:,}  {(step - s_log) / (now - t_log):.1f} env steps/s  "
                f"episodes {episodes}  recent train return {np.mean(recent) if recent else float('nan'):.1f}")
            t_log, s_log = now, step
        if callback is not None:
            callback(step)
    env.close()
    return {"env_steps": step, "updates": agent.updates, "episodes": episodes, "out": str(out)}


# --------------------------------------------------------------------------- selection
def select_snapshots(run_dir, medium_fraction: float = 1.0 / 3.0, write: bool = True) -> dict:
    """Pick the behaviour policies of a finished (or running) SAC run from ``eval.csv``.

    * expert: the snapshot with the highest deterministic evaluation return;
    * medium: among earlier snapshots, the one whose return is closest to
      ``medium_fraction * expert_return`` (D4RL's "about 1/3 of expert" early stop).

    Medium-replay is then every transition collected up to the medium snapshot's env
    step. Writes ``selection.json`` unless ``write=False``; returns the selection.
    """
    run_dir = Path(run_dir)
    rows = [r for r in read_eval_csv(run_dir) if np.isfinite(r["eval_return_mean"])]
    if not rows:
        raise ValueError(f"{run_dir}: no evaluated snapshots in eval.csv")
    expert = max(rows, key=lambda r: (r["eval_return_mean"], r["env_steps"]))
    target = medium_fraction * expert["eval_return_mean"]
    earlier = [r for r in rows if r["env_steps"] < expert["env_steps"]] or [expert]
    medium = min(earlier, key=lambda r: (abs(r["eval_return_mean"] - target), r["env_steps"]))
    cfg = json.loads((run_dir / "config.json").read_text())
    sel = {
        "env_id": cfg["env_id"],
        "medium_fraction": medium_fraction,
        "target_return": target,
        "expert": {k: expert[k] for k in ("env_steps", "eval_return_mean", "normalized_score", "snapshot")},
        "medium": {k: medium[k] for k in ("env_steps", "eval_return_mean", "normalized_score", "snapshot")},
        "medium_replay_transitions": medium["env_steps"],
    }
    if write:
        _atomic_text(run_dir / "selection.json", json.dumps(sel, indent=2) + "\n")
    return sel
