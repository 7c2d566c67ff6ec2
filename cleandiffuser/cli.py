"""The `cleandiffuser` command."""
import argparse
import os
import sys


def _demo(args) -> int:
    from .demos.toy2d import format_table, run
    print(f"Training EDM, consistency distillation and consistency training on a 2-D mixture of 8 Gaussians "
          f"({args.steps} EDM steps; about a minute on 2 CPU cores)...", flush=True)
    rows = run(out=args.out, steps=args.steps, seed=args.seed)
    print(format_table(rows))
    print(f"\nplot: {os.path.join(args.out, 'samples.png')}\nreport: {os.path.join(args.out, 'report.json')}"
          f"\ncheckpoints: {args.out}/{{edm,cd,ct}}.ckpt")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cleandiffuser", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="one-step consistency models on a 2-D toy: train, sample, plot")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--steps", type=int, default=2000, help="EDM steps; CD gets half, CT twice (default: 2000)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    from .datagen.cli import add_dataset_commands
    add_dataset_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
