"""Gradient steps/s and acting latency of every offline-RL agent at its default (HalfCheetah) size.

    python benchmarks/bench_algorithms.py --seconds 5 --threads 2

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
from cleandiffuser.runner.offline import build_agent, compile_agent

OBS, ACT = 17, 6
AGENTS = [  # (label, config, overrides, sample-step settings for the latency table)
    ("IDQL-DDPM (T=5)", "idql", ["agent.actor=ddpm"], [None]),
    ("IDQL-EDM", "idql", ["agent.actor=edm"], [1, 2, 4, 20]),
    ("IDQL-CT", "idql", ["agent.actor=ct"], [1, 2, 4]),
    ("IDQL-CD (distilling)", "idql", ["agent.actor=cd", "agent.distill_steps=1", "steps=2"], [1, 2, 4]),
    ("DQL", "dql", [], [None]),
    ("EDP", "edp", [], [None]),
    ("DBC", "dbc", [], [None]),
]


def batch_of(size: int) -> dict:
    return {"obs": {"state": torch.randn(size, OBS)}, "next_obs": {"state": torch.randn(size, OBS)},
            "act": torch.rand(size, ACT) * 2 - 1, "rew": torch.randn(size, 1), "tml": torch.zeros(size, 1)}


def updates_per_second(agent, batch: dict, seconds: float) -> float:
    for _ in range(5):
        agent.update(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        agent.update(batch)
        n += 1
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def act_ms(agent, repeats: int = 20) -> float:
    obs = torch.randn(1, OBS)
    agent.act(obs)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        agent.act(obs)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print(f"{'agent':<22}{'batch':>6}{'fp32 upd/s':>12}{'auto upd/s':>12}{'+compile':>10}")
    latency_rows = []
    for label, config, overrides, settings in AGENTS:
        rates = {}
        for precision, compiled in (("fp32", False), ("auto", False), ("auto", True)):
            cfg = load_config(config, [*overrides, f"precision={precision}"])
            agent = build_agent(cfg, OBS, ACT, torch.device("cpu"))
            if compiled:
                compile_agent(agent)
            if config == "idql" and "agent.actor=cd" in overrides:
                agent.update(batch_of(cfg.batch_size))  # step 1 starts the distillation
            rates[precision + "+compile" * compiled] = updates_per_second(agent, batch_of(cfg.batch_size),
                                                                         args.seconds)
        print(f"{label:<22}{cfg.batch_size:>6}{rates['fp32']:>12.1f}{rates['auto']:>12.1f}"
              f"{rates['auto+compile']:>10.1f}", flush=True)
        agent.eval()
        for k in settings:
            if k is not None:
                agent.sample_steps = k
            nfe = agent.nfe() if hasattr(agent, "nfe") else None
            cand = getattr(agent, "num_candidates", 1)
            latency_rows.append((label, agent.sample_steps, nfe, cand, act_ms(agent)))
    print(f"\n{'agent':<22}{'steps':>6}{'NFE':>5}{'candidates':>11}{'ms/action':>11}")
    for label, steps, nfe, cand, ms in latency_rows:
        print(f"{label:<22}{steps!s:>6}{nfe!s:>5}{cand:>11}{ms:>11.2f}")


if __name__ == "__main__":
    main()
