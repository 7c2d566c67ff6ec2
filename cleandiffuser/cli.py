"""The `cleandiffuser` command."""
import argparse
import os
import sys



def _other_runnable(samples: int = 10, interval: float = 0.05, read=None) -> list[int]:
    """Runnable threads of other processes, sampled `samples` times (Linux /proc/stat; [] elsewhere)."""
    import time

    def procs_running() -> int | None:
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("procs_running"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    read = read or procs_running
    counts = []
    for i in range(samples):
        n = read()
        if n is None:
            return []
        counts.append(max(n - 1, 0))  # minus this process (single-threaded before torch loads)
        if i + 1 < samples:
            time.sleep(interval)
    return counts


def choose_openmp_wait(environ=os.environ, runnable=None) -> str:
    """Set OpenMP's wait policy before torch loads its runtime; returns "user", "spin" or "passive".

    Threads that spin briefly at barriers train 1.8x faster on cores we have to ourselves (quickstart:
    32.5 vs 17.7 updates/s), but 5x slower when another process shares the cores (1.5 vs 8.4), so spin
    only when nothing else is running now. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
    """
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return "user"
    counts = _other_runnable() if runnable is None else runnable
    if counts and 2 * sum(c > 0 for c in counts) < len(counts):  # idle in most samples
        environ["GOMP_SPINCOUNT"] = "20000"
        return "spin"
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive"


def _demo(args) -> int:
    from .demos.toy2d import format_table, run
    print(f"Training EDM, consistency distillation and consistency training on a 2-D mixture of 8 Gaussians "
          f"({args.steps} EDM steps; about a minute on 2 CPU cores)...", flush=True)
    rows = run(out=args.out, steps=args.steps, seed=args.seed)
    print(format_table(rows))
    print(f"\nplot: {os.path.join(args.out, 'samples.png')}\nreport: {os.path.join(args.out, 'report.json')}"
          f"\ncheckpoints: {args.out}/{{edm,cd,ct}}.ckpt")
    return 0


def _train(args) -> int:
    from .dataset import DatasetFormatError, UnknownDatasetError
    from .runner import ConfigError, format_table, load_config, train
    from .runner.config import apply_overrides, check_config, read_yaml
    from .runner.guards import NonFiniteLossError
    overrides = list(args.overrides)
    if args.algo is not None and "=" in args.algo:  # `train --config-name X key=value`: no algo given
        overrides.insert(0, args.algo)
        args.algo = None
    if args.dataset is not None:
        overrides.append(f"dataset={args.dataset}")
    if _is_imitation(args):
        from .imitation.train import run_from_cli
        if args.resume is not None:
            return run_from_cli(None, overrides, run_dir=args.resume, resume=True, progress=not args.no_progress)
        return run_from_cli(args.config_name or args.algo, overrides, run_dir=args.run_dir,
                            progress=not args.no_progress)
    try:
        if args.resume is not None:
            if args.algo or args.config_name:
                raise ConfigError("--resume RUN_DIR takes its config from RUN_DIR/config.yaml; "
                                  "give only overrides (e.g. steps=2000000 to extend the run)")
            path = os.path.join(args.resume, "config.yaml")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"cannot resume: {path} not found (is {args.resume} a run directory?)")
            recorded = read_yaml(path)
            cfg = apply_overrides(recorded.copy(), overrides, source=path)
            if cfg.get("algo") != recorded.get("algo"):  # its checkpoint holds that algorithm's agent
                raise ConfigError(f"cannot resume {args.resume} as algo={cfg.get('algo')}: it is an "
                                  f"{recorded.get('algo')!r} run; start a new run (another --run-dir) for another "
                                  "algorithm")
            check_config(cfg, path)
            run_dir, resume = args.resume, True
        else:
            name = args.config_name or args.algo
            if name is None:
                raise ConfigError("name an algorithm (cleandiffuser train idql) or a config (--config-name NAME)")
            cfg = load_config(name, overrides)
            if args.algo and args.config_name and cfg.algo != args.algo:
                raise ConfigError(f"--config-name {args.config_name} is for algo {cfg.algo!r}, not {args.algo!r}")
            run_dir, resume = args.run_dir, False
        report = train(cfg, run_dir=run_dir, resume=resume, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, FileExistsError, UnknownDatasetError, DatasetFormatError) as e:
        return _usage_error(e)  # FileExistsError includes RunLockedError: another process trains there
    except NonFiniteLossError as e:  # the training diverged: a failed run, not a usage error
        print(f"error: {e}", file=sys.stderr)
        return 1
    if report:
        print("\n" + format_table(report))
        print(f"\nrun directory: {report['run_dir']}\ncheckpoint: {report['checkpoint']}")
        for name, path in report.get("plots", {}).items():
            print(f"{name.replace('_', ' ')}: {path}")
    return 0


def _is_imitation(args) -> bool:
    """Imitation configs live in configs/imitation/ and have a `policy` section; offline RL's have `algo`.
    A config file that is not valid YAML raises ConfigError naming it."""
    from .runner.config import read_yaml

    if args.resume is not None:
        path = os.path.join(args.resume, "config.yaml")
        if not os.path.isfile(path):
            return False
        return "policy" in read_yaml(path)
    name = args.config_name or args.algo or ""
    if name.startswith("imitation/"):
        return True
    if name.endswith((".yaml", ".yml")) and os.path.isfile(name):
        return "policy" in read_yaml(name)
    return False


def _eval(args) -> int:
    from .imitation.evaluate import eval_from_cli, is_imitation_target
    if is_imitation_target(args.path):  # an imitation run (config.yaml with a `policy` section) or policy checkpoint
        return eval_from_cli(args.path, overrides=args.overrides, episodes=args.episodes, seeds=args.seeds,
                             chaining=args.chaining, sample_steps=args.sample_steps, n_envs=args.n_envs,
                             device=args.device, video=args.video)
    from .runner import ConfigError, evaluate_run, format_table
    if args.chaining:
        print("error: --chaining is for imitation runs (consistency policy students)", file=sys.stderr)
        return 2
    try:
        report = evaluate_run(args.path, sample_steps=args.sample_steps, episodes=args.episodes, seeds=args.seeds,
                              n_envs=args.n_envs, device=args.device, overrides=args.overrides, video=args.video)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n" + format_table(report))
    for row in report["rows"] if args.video else ():
        video = row.get("video") or "not rendered (see the warning above)"
        print(f"video (sample_steps={row['sample_steps']}): {video}")
    return 0


def _report(args) -> int:
    from .runner import aggregate_runs, format_aggregate
    table = format_aggregate(aggregate_runs(args.runs))
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


def add_run_commands(sub) -> None:
    from .runner import available_configs
    configs = ", ".join(available_configs())
    train = sub.add_parser("train", help="train an offline-RL agent in a run directory, evaluate it, report",
                           description=f"Built-in configs: {configs}. Trailing key=value pairs override the config "
                                       "(e.g. agent.actor=edm steps=20000 eval.episodes=5).")
    train.add_argument("algo", nargs="?", help="algorithm / built-in config name (iql, idql, dql, edp, dbc)")
    train.add_argument("overrides", nargs="*", help="config overrides key=value")
    train.add_argument("--config-name", help="a built-in config name or a path to a YAML file")
    train.add_argument("--dataset", help="dataset: a generated name (see `cleandiffuser dataset list`), "
                                         "a D4RL .hdf5 file, or a Minari dataset")
    train.add_argument("--run-dir", help="where the run goes (default runs/ALGO/DATASET-seedN-TIME)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate a run directory or run checkpoint")
    ev.add_argument("path", help="run directory (uses checkpoints/latest.ckpt) or a .ckpt file")
    ev.add_argument("overrides", nargs="*", help="agent overrides, e.g. agent.num_candidates=64; imitation runs: "
                                                 "policy overrides, e.g. policy.noise_scheduler.bins=40 or "
                                                 "policy.chaining_times=[0,20,40]")
    ev.add_argument("--sample-steps", type=int, nargs="+", help="actor sample steps to score (one row each); "
                                                                "imitation runs: Heun bins (edm) or DDIM steps (ddim)")
    ev.add_argument("--episodes", type=int, help="episodes per eval seed")
    ev.add_argument("--chaining", action="store_true", help="imitation runs (ctm students): evaluate with "
                                                            "multistep chaining at policy.chaining_times")
    ev.add_argument("--seeds", type=int, nargs="+", help="evaluation seeds")
    ev.add_argument("--n-envs", type=int, help="vectorized environments (imitation runs: environments stepped in "
                                               "lockstep, one batched policy call per step)")
    ev.add_argument("--device", help="cpu, cuda, ...")
    ev.add_argument("--video", action="store_true", help="render the first episode of each row beside the report "
                                                         "(.mp4 with the video extra, else .npz of frames)")
    ev.set_defaults(func=_eval)

    rep = sub.add_parser("report", help="aggregate finished runs (mean ± SE over training seeds)")
    rep.add_argument("runs", nargs="+", help="run directories")
    rep.add_argument("--out", help="also write the markdown table here")
    rep.set_defaults(func=_report)


def _pull_overrides(sub, argv: list[str]) -> tuple[list[str], list[str]]:
    """Take `key=value` overrides of train/eval out of argv wherever they stand, so that one following a
    multi-value option (`eval RUN --sample-steps 1 2 agent.num_candidates=64`) is not read as its value."""
    if not argv or argv[0] not in ("train", "eval"):
        return argv, []
    single = {o for a in sub.choices[argv[0]]._actions if a.nargs is None for o in a.option_strings}
    keep, overrides = [], []
    for i, tok in enumerate(argv):
        is_value = i > 0 and argv[i - 1] in single  # e.g. --run-dir a=b
        (overrides if "=" in tok and not tok.startswith("-") and not is_value else keep).append(tok)
    return keep, overrides


def main(argv: list[str] | None = None) -> int:
    if "torch" not in sys.modules:  # only before torch loads OpenMP (not when tests call main())
        choose_openmp_wait()
    parser = argparse.ArgumentParser(prog="cleandiffuser", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="one-step consistency models on a 2-D toy: train, sample, plot")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--steps", type=int, default=2000, help="EDM steps; CD gets half, CT twice (default: 2000)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    from .datagen.cli import add_dataset_commands
    add_dataset_commands(sub)
    add_run_commands(sub)
    argv, overrides = _pull_overrides(sub, list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if overrides:
        args.overrides = list(args.overrides) + overrides
    if extra:  # key=value overrides may follow options: `train idql --dataset X steps=10`
        if args.command not in ("train", "eval") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except Exception as e:
        if not isinstance(e, _usage_error_types()):
            raise  # a bug: keep its traceback
        return _usage_error(e)


def _usage_error_types() -> tuple[type[Exception], ...]:
    """Exceptions that mean the command was given something unusable (a config, a data file, a checkpoint, a
    path), raised with a message that names it. The CLI prints that message and exits 2; any other exception
    is a bug and keeps its traceback."""
    from .dataset import DatasetFormatError, UnknownDatasetError
    from .runner.config import ConfigError
    from .serialization import CheckpointError

    return (ConfigError, DatasetFormatError, UnknownDatasetError, CheckpointError, FileNotFoundError,
            FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def _usage_error(error: Exception) -> int:
    """Print `error: <message>` as one line on stderr; returns the exit code 2."""
    print("error: " + " ".join(str(error).split()), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
