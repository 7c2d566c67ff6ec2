"""Gradient steps/s and acting latency of every offline-RL agent at its default (HalfCheetah) size.

    python benchmarks/bench_algorithms.py --seconds 5 --threads 2
    python benchmarks/bench_algorithms.py --device cuda --variants fp32 auto   # on a GPU
    python benchmarks/bench_algorithms.py --only FQL IDQL-CT                   # some agents

Training: agent.update on a random batch of the config's batch size (17-d observations, 6-d actions),
timed after warm-up, for precision fp32 and auto (bf16 autocast where the CPU is fast at it), and auto with
the generative model's training passes compiled (`compile: true` in the configs, the default).
Acting: agent.act on ONE observation (median ms), per sample-step setting; IDQL draws its 256
candidates in one batch, DQL its 50. Pause other jobs while measuring (timings on shared cores are
meaningless).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from cleandiffuser.runner.config import load_config
from cleandiffuser.runner.offline import build_agent

OBS, ACT = 17, 6
AGENTS = [  # (label, config, overrides, sample-step settings for the latency table)
    ("IDQL-DDPM (T=5)", "idql", ["agent.actor=ddpm"], [None]),
    ("IDQL-EDM", "idql", ["agent.actor=edm"], [1, 2, 4, 20]),
    ("IDQL-CT", "idql", ["agent.actor=ct"], [1, 2, 4]),
    ("IDQL-CD (distilling)", "idql", ["agent.actor=cd", "agent.distill_steps=1", "steps=2"], [1, 2, 4]),
    ("IDQL-DDPM fixed critic", "idql", ["agent.actor=ddpm"], []),  # agent.critic_path: the actor's update only
    ("DQL", "dql", [], [None]),
    ("EDP", "edp", [], [None]),
    ("DBC", "dbc", [], [None]),
    ("IQL", "iql", [], [None]),
    ("FQL", "fql", [], [None]),
    ("FQL (flow_steps 5)", "fql", ["agent.flow_steps=5"], []),
]


VARIANTS = {"fp32": ("fp32", False), "auto": ("auto", False), "auto+compile": ("auto", True)}


def batch_of(size: int, device) -> dict:
    return {"obs": {"state": torch.randn(size, OBS, device=device)},
            "next_obs": {"state": torch.randn(size, OBS, device=device)},
            "act": torch.rand(size, ACT, device=device) * 2 - 1, "rew": torch.randn(size, 1, device=device),
            "tml": torch.zeros(size, 1, device=device)}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def updates_per_second(agent, batch: dict, seconds: float) -> float:
    for _ in range(5):
        agent.update(batch)
    sync(agent.device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        agent.update(batch)
        n += 1
    sync(agent.device)  # queued GPU work counts
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def act_ms(agent, repeats: int = 20) -> float:
    obs = torch.randn(1, OBS, device=agent.device)
    agent.act(obs)
    times = []
    for _ in range(repeats):
        sync(agent.device)
        t = time.perf_counter()
        agent.act(obs)
        sync(agent.device)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                    help="training variants to time (auto: bf16 autocast where the hardware is fast at it)")
    ap.add_argument("--only", nargs="+", default=None, help="agents whose label starts with one of these (e.g. FQL)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(f"torch {torch.__version__}, {where}\n")
    print(f"{'agent':<22}{'batch':>6}" + "".join(f"{v + ' upd/s':>20}" for v in args.variants))
    latency_rows = []
    for label, config, overrides, settings in AGENTS:
        if args.only and not any(label.startswith(prefix) for prefix in args.only):
            continue
        rates = {}
        for variant in args.variants:
            precision, compiled = VARIANTS[variant]
            cfg = load_config(config, [*overrides, f"precision={precision}"])
            agent = build_agent(cfg, OBS, ACT, device)
            if "fixed critic" in label:
                agent.train_critic = False  # what a pretrained critic (agent.critic_path) leaves to train
            if compiled:
                agent.compile_network()
            batch = batch_of(cfg.batch_size, device)
            if config == "idql" and "agent.actor=cd" in overrides:
                agent.update(batch)  # step 1 starts the distillation
            rates[variant] = updates_per_second(agent, batch, args.seconds)
        print(f"{label:<22}{cfg.batch_size:>6}" + "".join(f"{rates[v]:>20.1f}" for v in args.variants), flush=True)
        agent.eval()
        for k in settings:
            if k is not None:
                agent.sample_steps = k
            nfe = agent.nfe() if hasattr(agent, "nfe") else None
            cand = getattr(agent, "num_candidates", 1)
            latency_rows.append((label, getattr(agent, "sample_steps", "-"), nfe, cand, act_ms(agent)))
    print(f"\n{'agent':<22}{'steps':>6}{'NFE':>5}{'candidates':>11}{'ms/action':>11}")
    for label, steps, nfe, cand, ms in latency_rows:
        print(f"{label:<22}{steps!s:>6}{nfe!s:>5}{cand:>11}{ms:>11.2f}")


if __name__ == "__main__":
    main()
