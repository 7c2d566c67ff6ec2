"""Acting latency of trained imitation policies: ms per predict_action call (one observation, batch 1) for
each inference setting, next to the network evaluations it makes.

    python benchmarks/bench_imitation.py RUN_DIR [RUN_DIR ...] [--threads 1] [--repeats 20]

A Consistency Policy student (kind ctm) is timed at one step and chained; other policies at their configured
setting. One predict_action call returns a chunk of n_action_steps actions, so "ms per action" in a rollout is
this divided by n_action_steps (printed too).
"""
import argparse
from pathlib import Path

import torch

from cleandiffuser.imitation import get_policy
from cleandiffuser.imitation.policy import measure_latency_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="imitation run directories or checkpoints")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} calls\n")
    print(f"{'run':<28}{'setting':<28}{'NFE':>5}{'ms / call':>11}{'ms / action':>13}")
    for run in args.runs:
        policy = get_policy(run, device="cpu")
        settings = [False, True] if policy.kind == "ctm" else [False]
        for chained in settings:
            if chained:
                policy.enable_chaining()
            ms = measure_latency_ms(policy, repeats=args.repeats)
            label = "/".join(Path(run).parts[-2:])
            print(f"{label:<28}{policy.inference_setting():<28}{policy.nfe():>5}{ms:>11.2f}"
                  f"{ms / policy.n_action_steps:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
