"""Do an IDQL actor's candidates differ? Spread of the N candidate actions per observation, per sample-step setting.

IDQL picks one of N (256) candidates by its advantage; that only helps if the candidates differ. For
`--obs` dataset observations (evenly spaced through the run's own dataset) this draws the N candidates at
each sample-step setting and prints, averaged over observations: the within-observation std of the
candidates (action units, mean over action dimensions), the std of their advantages A = Q - V, the
RMS distance from the dataset's own action to the nearest candidate (does the set cover what the data did?),
the candidates' mean |a| against the data's (an averaged multimodal behaviour shrinks towards 0), and the
dataset's action std for scale.

    python experiments/idql_candidate_spread.py runs/experiments/halfcheetah-medium-cpu/idql-edm-seed0 --steps 1 2 4
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from cleandiffuser.dataset import qlearning_dataset
from cleandiffuser.runner import load_agent


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="IDQL run directories")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="sample-step settings")
    ap.add_argument("--obs", type=int, default=64, help="dataset observations (evenly spaced)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(f"{'run':<48}{'steps':>6}{'candidate std':>15}{'advantage std':>15}{'data to nearest':>17}"
          f"{'mean |a|':>10}{'data |a|':>10}{'data action std':>17}")
    for run_dir in args.runs:
        run = load_agent(run_dir, device="cpu")
        if not hasattr(run.agent, "candidates"):
            raise SystemExit(f"{run_dir}: not an IDQL run (algo {run.cfg.algo!r})")
        data = qlearning_dataset(run.cfg.dataset)
        idx = np.linspace(0, len(data["observations"]) - 1, args.obs).astype(int)
        obs = run.normalizer.normalize(torch.as_tensor(data["observations"][idx], dtype=torch.float32))
        acts = torch.as_tensor(data["actions"][idx], dtype=torch.float32)
        data_std = float(np.asarray(data["actions"]).std(0).mean())
        data_abs = acts.abs().mean().item()
        for k in args.steps:
            run.agent.sample_steps = k
            torch.manual_seed(args.seed)
            cand, adv = run.agent.candidates(obs)
            cand = cand.float()
            nearest = (cand - acts[:, None]).pow(2).mean(2).min(1).values.sqrt().mean().item()
            print(f"{str(run_dir)[-48:]:<48}{k:>6}{cand.std(1).mean().item():>15.4f}"
                  f"{adv.float().std(1).mean().item():>15.4f}{nearest:>17.4f}{cand.abs().mean().item():>10.3f}"
                  f"{data_abs:>10.3f}{data_std:>17.4f}", flush=True)


if __name__ == "__main__":
    main()
