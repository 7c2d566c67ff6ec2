"""Acting latency of trained imitation policies: ms per predict_action call (one observation, batch 1) for
each inference setting, next to the network evaluations it makes and the machine's floor for it.

    python benchmarks/bench_imitation.py RUN_DIR [RUN_DIR ...] [--threads 1] [--repeats 20]

A Consistency Policy student (kind ctm) is timed at one step and chained; other policies at their configured
setting. One predict_action call returns a chunk of n_action_steps actions, so "ms per action" in a rollout is
this divided by n_action_steps (printed too). "floor" is the call's FLOPs over the measured matmul peak of the
precision a batch-1 call runs in (fp32: bf16 autocast starts at 64 samples), and "x floor" how far above it the
call is: at batch 1 the small layers' fixed costs, not arithmetic, set the time.
"""
import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_core import matmul_peak
from cleandiffuser.imitation import get_policy
from cleandiffuser.imitation.policy import measure_latency_ms


def call_flops(policy) -> int:
    obs = policy.example_obs(1)
    with FlopCounterMode(display=False) as counter:
        policy.predict_action(obs)
    return counter.get_total_flops()


def label(run: str) -> str:
    path = Path(run)
    return "/".join((path.parent.parent if path.suffix == ".ckpt" else path).parts[-2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="imitation run directories or checkpoints")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak(torch.float32, 2.0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} calls; "
          f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s\n")
    width = max(len(label(run)) for run in args.runs) + 2
    print(f"{'run':<{width}}{'setting':<28}{'NFE':>5}{'GFLOP':>8}{'floor ms':>10}{'ms / call':>11}{'x floor':>9}"
          f"{'ms / action':>13}")
    for run in args.runs:
        policy = get_policy(run, device="cpu")
        for chained in [False, True] if policy.kind == "ctm" else [False]:
            if chained:
                policy.enable_chaining()
            ms = measure_latency_ms(policy, repeats=args.repeats)
            flops = call_flops(policy)
            floor_ms = 1000.0 * flops / peak
            print(f"{label(run):<{width}}{policy.inference_setting():<28}{policy.nfe():>5}{flops / 1e9:>8.2f}"
                  f"{floor_ms:>10.2f}{ms:>11.2f}{ms / floor_ms:>9.0f}{ms / policy.n_action_steps:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
