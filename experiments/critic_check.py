"""Does a trained run's IQL critic value the data's states as their returns say?

    python experiments/critic_check.py RUN_DIR [--rows 200000]

Compares V(s) with each state's discounted return-to-go in the run's dataset (normalized rewards, as the critic
was trained; episodes cut at terminals and timeouts), overall and at k steps before a terminal (a fall).
"""
from __future__ import annotations

import argparse

import h5py
import numpy as np
import torch

from cleandiffuser.dataset.d4rl_mujoco_dataset import iql_reward_scale
from cleandiffuser.dataset.sources import resolve_source
from cleandiffuser.runner import load_agent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--rows", type=int, default=200_000, help="dataset rows to check (from the start)")
    args = ap.parse_args()
    run = load_agent(args.run_dir, device="cpu")
    if not hasattr(run.agent, "critic") or not hasattr(run.agent.critic, "v"):
        raise SystemExit(f"{args.run_dir}: algo {run.cfg.algo!r} has no IQL critic (idql runs do)")
    keys = ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")
    kind, path = resolve_source(str(run.cfg.dataset))
    if kind != "d4rl":
        raise SystemExit(f"{run.cfg.dataset}: a {kind} dataset; this check reads D4RL-format HDF5 files")
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in keys}
    rew = data["rewards"].astype(np.float64) * (iql_reward_scale(data) if run.cfg.normalize_reward else 1.0)
    n = min(args.rows, len(rew))
    fall = data["terminals"][:n].astype(bool)
    end = fall | data["timeouts"][:n].astype(bool)
    gamma = float(run.cfg.agent.critic.discount)
    ret, acc = np.zeros(n), 0.0
    for i in range(n - 1, -1, -1):
        acc = rew[i] + gamma * acc * (not end[i])
        ret[i] = acc
    with torch.no_grad():
        v = run.agent.critic.v(torch.as_tensor(run.normalizer.normalize(data["observations"][:n]),
                                               dtype=torch.float32)).numpy().ravel()
    print(f"{run.cfg.dataset}, {n:,} rows: V mean {v.mean():.1f}, discounted return-to-go mean {ret.mean():.1f}, "
          f"correlation {np.corrcoef(v, ret)[0, 1]:.3f}")
    idx = np.where(fall)[0]
    for k in (1, 5, 20, 100):
        j = idx[idx >= k] - k
        print(f"  {k:>3} steps before a terminal ({len(j)} states): V {v[j].mean():.1f}, return-to-go {ret[j].mean():.1f}")


if __name__ == "__main__":
    main()
