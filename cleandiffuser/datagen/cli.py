"""``cleandiffuser dataset ...`` subcommands (wired into :mod:`cleandiffuser.cli` with
:func:`add_dataset_commands`)."""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys


def add_dataset_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``dataset make|info|list`` to an argparse subparsers object. Each leaf parser
    sets ``func`` (called with the parsed args, returns an exit code)."""
    ds = subparsers.add_parser("dataset", help="generate and inspect D4RL-style offline datasets (gymnasium MuJoCo)")
    sub = ds.add_subparsers(dest="dataset_command", required=True)

    mk = sub.add_parser("make", help="generate a named dataset, e.g. halfcheetah-medium-cd-v0",
                        description="Generate ENV-KIND-cd-v0 (ENV: halfcheetah, hopper, walker2d; KIND: random, "
                                    "medium, expert, medium-replay, medium-expert) into the data directory "
                                    "($CLEANDIFFUSER_DATA or ~/.cache/cleandiffuser/datasets). medium/expert/"
                                    "medium-replay need a trained behaviour run (cleandiffuser.datagen.train_behaviour).")
    mk.add_argument("name")
    mk.add_argument("--out", default=None, help="output .hdf5 path (default: NAME.hdf5 in the data directory)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--steps", type=int, default=None, help="transitions to roll out (default: 1000000)")
    mk.add_argument("--run", default=None, help="behaviour-policy run directory (default: runs/behaviour/ENV)")
    mk.add_argument("--policy", default=None, help="actor snapshot file to use instead of the run's selection")
    mk.add_argument("--force", action="store_true", help="overwrite an existing file")
    mk.add_argument("--from-rerun", action="store_true",
                    help="medium-replay: take the replay buffer of a rerun of the SAC run (not the run that made the "
                         "shipped medium snapshot), up to the same env step; recorded in the file")
    mk.set_defaults(func=_make)

    info = sub.add_parser("info", help="size, episodes, returns and normalized score of a dataset file or name")
    info.add_argument("source", metavar="PATH|NAME")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    ls = sub.add_parser("list", help="generated dataset names and whether their files exist")
    ls.set_defaults(func=_list)
    return ds


def _make(args) -> int:
    from .generate import BehaviourPolicyMissingError, make_dataset

    parts = ["cleandiffuser", "dataset", "make", args.name, "--seed", str(args.seed)]
    for opt in ("out", "steps", "run", "policy"):
        if getattr(args, opt) is not None:
            parts += [f"--{opt}", str(getattr(args, opt))]
    parts += ["--from-rerun"] if args.from_rerun else []
    cmd = " ".join(shlex.quote(a) for a in parts + (["--force"] if args.force else []))
    try:
        path = make_dataset(args.name, out=args.out, seed=args.seed, steps=args.steps, run_dir=args.run,
                            policy=args.policy, progress=True, command=cmd, force=args.force,
                            from_rerun=args.from_rerun)
    except (BehaviourPolicyMissingError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    _print_info(path)
    return 0


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_info(source, as_json: bool = False) -> None:
    from .generate import dataset_info

    d = dataset_info(source)
    if as_json:
        print(json.dumps(d, indent=2, default=str))
        return
    m = d["metadata"]
    score = d["normalized_score"]
    lines = [
        f"path:               {d['path']}",
        f"size:               {_fmt_bytes(d['file_bytes'])}, {d['transitions']:,} transitions "
        f"(obs {d['obs_dim']}, act {d['act_dim']})",
        f"episodes:           {d['episodes']:,} ({d['complete_episodes']:,} complete; "
        f"{d['terminals']:,} terminals, {d['timeouts']:,} timeouts)",
        f"return:             {d['return_mean']:.1f} +- {d['return_std']:.1f}",
        f"normalized score:   {score:.1f}" if not math.isnan(score) else "normalized score:   n/a (unknown env)",
    ]
    for key in ("env_id", "policy", "policy_sha256", "seed", "gymnasium_version", "mujoco_version",
                "library_version", "generation_command"):
        if key in m and m[key] != "":
            lines.append(f"{key + ':':<20}{m[key]}")
    print("\n".join(lines))


def _info(args) -> int:
    from ..dataset import DatasetFormatError

    try:
        _print_info(args.source, args.json)
    except (FileNotFoundError, LookupError, DatasetFormatError) as e:  # a missing, unknown or malformed dataset
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _list(args) -> int:
    from .registry import data_dir, dataset_path, generated_dataset_names

    print(f"data directory: {data_dir()}")
    for name in generated_dataset_names():
        p = dataset_path(name)
        print(f"  {name:<34} {'present' if p.is_file() else '-'}")
    return 0


def main(argv=None) -> int:
    """Standalone entry: ``python -m cleandiffuser.datagen.cli dataset ...``."""
    parser = argparse.ArgumentParser(prog="cleandiffuser")
    add_dataset_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
