"""Train a SAC behaviour policy whose snapshots become medium / expert data.

    python -m cleandiffuser.datagen.train_behaviour --env HalfCheetah-v5 \\
        --out runs/behaviour/halfcheetah --steps 1000000

Re-running the same command continues from the last checkpoint, exactly. ``--select``
only (re)writes ``selection.json`` (medium and expert snapshots) from ``eval.csv``.
"""
from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cleandiffuser.datagen.train_behaviour", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v5", help="gymnasium id (default: HalfCheetah-v5)")
    p.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=1_000_000, help="total env steps (default: 1000000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=10_000, help="uniform-random env steps before learning (default: 10000)")
    p.add_argument("--snapshot-every", type=int, default=20_000, help="actor snapshot + evaluation period (env steps)")
    p.add_argument("--checkpoint-every", type=int, default=10_000, help="checkpoint period (env steps)")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1; resume with the same value)")
    p.add_argument("--select", action="store_true", help="only write selection.json from eval.csv and print it")
    p.add_argument("--medium-fraction", type=float, default=1.0 / 3.0)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .sac import SACConfig, select_snapshots, train_sac

    if args.select:
        print(json.dumps(select_snapshots(args.out, args.medium_fraction), indent=2))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    cfg = SACConfig(env_id=args.env, seed=args.seed, warmup_steps=args.warmup)
    try:
        summary = train_sac(args.out, cfg, total_steps=args.steps, checkpoint_every=args.checkpoint_every,
                            snapshot_every=args.snapshot_every, eval_episodes=args.eval_episodes,
                            log=lambda s: print(s, flush=True))
    except (ValueError, RuntimeError) as e:  # --out holds a run with another config, or is in use
        print(f"error: {e}", file=sys.stderr)
        return 2
    sel = select_snapshots(args.out, args.medium_fraction)
    print(f"[sac] done: {summary['env_steps']:,} env steps. selection: medium {sel['medium']['snapshot']} "
          f"(return {sel['medium']['eval_return_mean']:.1f}), expert {sel['expert']['snapshot']} "
          f"(return {sel['expert']['eval_return_mean']:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
