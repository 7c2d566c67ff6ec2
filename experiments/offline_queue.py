"""Run a list of offline-RL trainings one after another, resumably, and aggregate their reports.

    python experiments/offline_queue.py --plan halfcheetah-medium-cpu            # run (or continue) the plan
    python experiments/offline_queue.py --plan halfcheetah-medium-cpu --report   # table only

Each run lives in runs/experiments/<plan>/<name>-seed<k>; a finished run (report.json) is skipped, an
interrupted one is resumed from its latest checkpoint, so the command can be killed and restarted at
any time. The aggregate table (mean ± SE over training seeds) goes to results/<plan>.md, and each finished
run's record (report.json, config.yaml, environment.json: a few KB) is copied to results/records/<plan>/<run>/,
so the tables regenerate, and finished runs are skipped, on a checkout without the run directories.

Several workers may share plans: each run is claimed with a file lock, so on 2 cores two workers with
one thread each (OMP_NUM_THREADS=1) finish more runs per hour than one worker with two threads:

    OMP_NUM_THREADS=1 python experiments/offline_queue.py --plan halfcheetah-medium-cpu &   # twice

On a GPU, many trainings at once (these small agents leave one run launch-bound), plans in order, missing
datasets made by the first worker that needs them. Start NVIDIA's MPS daemon first: under it 14 runs on an H100
each kept a lone run's speed (~14x one run's throughput); without it they take turns on the GPU (~4x):

    nvidia-cuda-mps-control -d
    python experiments/offline_queue.py --plan hopper-medium-cpu walker2d-medium-cpu --workers 14 --set compile=false

A run that fails leaves runs/experiments/<plan>/.locks/<run>.failed so other workers skip it; delete it to retry.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cleandiffuser.runner.rundir import finished_run, keep_record, read_results_page, write_results_page

ROOT = Path(__file__).resolve().parents[1]

# CPU budgets: the papers train 1M-3M steps; these are what a 2-core CPU affords (the table says so).
_CPU = ["steps=20000", "checkpoint_every=2000", "keep_every=0", "eval.episodes=10", "eval.n_envs=10"]
_SEED000_OWN_CRITIC = [  # IDQL with its critic trained alongside the actor, at the actor's budget
    ("idql-ct", "idql", [*_CPU, "agent.actor=ct", "eval.sample_steps=[1,2,4]"]),
    ("idql-cd", "idql", [*_CPU, "agent.actor=cd", "agent.distill_steps=8000", "eval.sample_steps=[1,2,4]"]),
    ("idql-edm", "idql", [*_CPU, "agent.actor=edm", "eval.sample_steps=[1,2,4]"]),
    ("idql-ddpm", "idql", [*_CPU, "agent.actor=ddpm", "eval.sample_steps=null"]),
]
# (name, config, overrides); every entry runs for each seed. "{entry}" in an override stands for that entry's run
# directory with the same seed, a run that must finish first (with its checkpoint).
_SEED000 = [
    *_SEED000_OWN_CRITIC,
    ("dql", "dql", [*_CPU, "eval.sample_steps=null"]),
    ("edp", "edp", [*_CPU, "eval.sample_steps=null"]),
    ("dbc", "dbc", [*_CPU, "eval.sample_steps=null"]),
    ("iql", "iql", [*_CPU, "eval.sample_steps=null"]),  # the non-diffusion baseline, at the same budget
    ("fql", "fql", [*_CPU, "eval.sample_steps=null"]),  # Flow Q-learning: one-step policy, one NFE per action
    # seed 000's own workflow (iql_training -> edm/cd/ct_training -> inference): one IQL critic trained first and
    # shared, fixed, by the four actors. It gets 3x the actor's steps: at 20,000 the critic is what fails
    # (results/critic-budget-hopper-medium.md), and an IQL update costs a fraction of a diffusion actor's.
    ("iql-60k", "iql", [*_CPU, "steps=60000", "eval.sample_steps=null"]),
    *[(f"{name}-iql60k", config, [*overrides, "agent.critic_path={iql-60k}"])
      for name, config, overrides in _SEED000_OWN_CRITIC],
    # ... and cd_training as the tutorial does it: all 20,000 updates distill idql-edm-iql60k's trained EDM
    # (idql-cd-iql60k trains its own EDM for 12,000 updates, then distills it for 8,000)
    ("idql-cd-from-edm-iql60k", "idql", [*_CPU, "agent.actor=cd", "eval.sample_steps=[1,2,4]",
                                         "agent.critic_path={iql-60k}", "agent.teacher_path={idql-edm-iql60k}"]),
]
# the seed-000 table on each generated dataset (CPU budgets)
_KINDS = {env: ("medium", "medium-replay", "medium-expert") for env in ("halfcheetah", "hopper", "walker2d")}
DATASETS = {f"{env}-{kind}-cpu": f"{env}-{kind}-cd-v0" for env, kinds in _KINDS.items() for kind in kinds}
PLANS: dict[str, list[tuple[str, str, list[str]]]] = {plan: _SEED000 for plan in DATASETS}
# EDP with a noise-predicting actor scored 16.6 on halfcheetah-medium: the Q term on the eps-prediction action
# estimate, or the T=100 actor and its DPM-Solver sampling? (edp-x0 is the default since; its seed-0 run is
# halfcheetah-medium-cpu/edp-seed0, the same config)
DATASETS["halfcheetah-medium-edp-ablation-cpu"] = "halfcheetah-medium-cd-v0"
PLANS["halfcheetah-medium-edp-ablation-cpu"] = [
    ("edp-eps", "edp", [*_CPU, "eval.sample_steps=null", "agent.actor_params.predict_noise=true"]),
    ("edp-eps-eta0", "edp", [*_CPU, "eval.sample_steps=null", "agent.actor_params.predict_noise=true", "agent.eta=0.0"]),
]


RECORDS = ROOT / "results" / "records"


_ENTRY_REF = re.compile(r"\{([\w.-]+)\}")


def run_dir_of(plan: str, name: str, seed: int) -> Path:
    return ROOT / "runs" / "experiments" / plan / f"{name}-seed{seed}"


def needs(plan: str, overrides: list[str], seed: int) -> list[Path]:
    """The run directories an entry's overrides refer to ("{entry}"): runs that must finish before it starts."""
    names = {entry for entry, *_ in PLANS[plan]}
    refs = [ref for o in overrides for ref in _ENTRY_REF.findall(o)]
    unknown = sorted(set(refs) - names)
    if unknown:
        raise ValueError(f"plan {plan}: overrides {overrides} refer to {unknown}, which are not entries of the plan "
                         f"(entries: {sorted(names)})")
    return [run_dir_of(plan, ref, seed) for ref in refs]


def resolved(overrides: list[str], plan: str, seed: int) -> list[str]:
    """The overrides with each "{entry}" replaced by that run's directory (relative: records stay portable)."""
    return [_ENTRY_REF.sub(lambda m: str(run_dir_of(plan, m.group(1), seed).relative_to(ROOT)), o) for o in overrides]


def run_dirs(plan: str, seeds, only=None) -> list[tuple[Path, str, list[str], int]]:
    """The plan's runs, seed by seed; with only (entry names), those and the runs they need."""
    out = []
    for seed in seeds:
        for name, config, overrides in PLANS[plan]:
            out.append((run_dir_of(plan, name, seed), config, overrides, seed))
    if only:
        keep = {run_dir_of(plan, name, seed) for name in only for seed in seeds}
        keep |= {dep for run_dir, _, overrides, seed in out if run_dir in keep for dep in needs(plan, overrides, seed)}
        out = [e for e in out if e[0] in keep]
    return out


def behaviour_row(dataset: str) -> str:
    """The data's own score (its episodes' returns) as the reference row of the table."""
    from cleandiffuser.datagen.generate import dataset_info
    info = dataset_info(dataset)
    scores = info.get("normalized_score")
    return (f"| behaviour data | {dataset} | - | - | - | {info.get('complete_episodes')} | "
            f"{scores:.1f} (mean over the dataset's episodes) | - |")


def last_log_wall(run_dir: Path) -> float | None:
    """wall_s of the last row of a run's log.csv (training time, for runs whose report predates train_seconds)."""
    import csv
    try:
        rows = list(csv.DictReader((run_dir / "log.csv").open()))
    except OSError:
        return None
    return float(rows[-1]["wall_s"]) if rows and rows[-1].get("wall_s") else None


def entry_name(run_dir) -> str:
    """The plan entry a run belongs to: runs/experiments/<plan>/<name>-seed<k> -> <name>."""
    return Path(run_dir).name.rsplit("-seed", 1)[0]


def finished_runs(entries) -> list[str]:
    """Each finished run's directory, or its committed record where the run directory is gone."""
    return [str(f) for f in (finished_run(d, RECORDS) for d, *_ in entries) if f is not None]


def trained_on(run_dir: Path) -> str:
    """'cpu', or the GPU's name, from the run's environment.json."""
    try:
        env = json.loads((run_dir / "environment.json").read_text())
    except (OSError, ValueError):
        return "?"
    return (env.get("cuda") or "?") if str(env.get("device", "cpu")).startswith("cuda") else "cpu"


def dataset_ready(plan: str) -> bool:
    from cleandiffuser.datagen.registry import dataset_path
    return dataset_path(DATASETS[plan]).is_file()


def make_dataset_if_free(plan: str, lock_dir: Path) -> bool | None:
    """Make the plan's dataset unless another worker is making it: True once it exists, None if another worker
    holds it (come back later), False if it cannot be made here."""
    lock = open(lock_dir / f"data-{DATASETS[plan]}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    with lock:
        if not dataset_ready(plan):
            print(f"[{time.strftime('%H:%M:%S')}] making {DATASETS[plan]}", flush=True)
            if subprocess.call([sys.executable, "-m", "cleandiffuser.cli", "dataset", "make", DATASETS[plan]],
                               cwd=ROOT) != 0:
                return False
    return True


def trained(run_dir: Path) -> bool:
    """Finished here, with its checkpoint (what a run that needs it loads), not only as a committed record."""
    return (run_dir / "report.json").is_file() and (run_dir / "checkpoints" / "latest.ckpt").is_file()


def run_plan(plan: str, entries, extra: list[str]) -> tuple[list[Path], int]:
    """Train every unclaimed, unfinished run of the plan whose needed runs are trained; returns the runs that failed
    here and how many wait on a needed run (another worker's, or one later in the list: come back)."""
    lock_dir = ROOT / "runs" / "experiments" / plan / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    is_failed = lambda d: (lock_dir / f"{d.name}.failed").is_file()  # noqa: E731
    # a needed run known only by its record (a fresh checkout) trains again: its dependents load its checkpoint
    wanted = {dep for run_dir, _, overrides, seed in entries if not finished_run(run_dir, RECORDS)
              for dep in needs(plan, overrides, seed)}
    done = lambda d: finished_run(d, RECORDS) is not None and (d not in wanted or trained(d))  # noqa: E731
    failed, waiting = [], 0
    for run_dir, config, overrides, seed in entries:
        if is_failed(run_dir) or done(run_dir):
            continue
        deps = needs(plan, overrides, seed)
        if any(is_failed(d) for d in deps):
            print(f"skipping {run_dir}: a run it needs failed ({', '.join(d.name for d in deps if is_failed(d))})",
                  flush=True)
            failed.append(run_dir)
            continue
        if not all(trained(d) for d in deps):
            waiting += 1
            continue
        lock = open(lock_dir / f"{run_dir.name}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another worker has this run
            lock.close()
            continue
        with lock:
            if done(run_dir):  # finished while we waited for the lock
                continue
            if run_dir.is_dir() and not (run_dir / "checkpoints" / "latest.ckpt").is_file():
                shutil.rmtree(run_dir)  # stopped before its first checkpoint (or it was deleted): nothing to resume
            cmd = [sys.executable, "-m", "cleandiffuser.cli", "train", "--no-progress"]
            if (run_dir / "checkpoints" / "latest.ckpt").is_file():
                cmd += ["--resume", str(run_dir)]
            else:
                cmd += [config, "--run-dir", str(run_dir), f"dataset={DATASETS[plan]}", f"seed={seed}",
                        *resolved(overrides, plan, seed), *extra]
            print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd)}", flush=True)
            rc = subprocess.call(cmd, cwd=ROOT)
            if rc == 0 and (run_dir / "report.json").is_file():
                # recorded now, not at the final --report: a session stopped midway keeps every finished run
                keep_record(run_dir, RECORDS)
            if rc < 0:  # killed by a signal (the machine or the user stopping jobs): resumable, not failed
                sys.exit(f"run stopped by signal {-rc}: {run_dir} (resumes on the next start)")
            if rc > 0:
                # marked so that other workers do not retry it in a loop; delete the marker to retry
                (lock_dir / f"{run_dir.name}.failed").write_text(" ".join(cmd) + "\n")
                print(f"run failed: {run_dir} (marker {lock_dir / (run_dir.name + '.failed')})", flush=True)
                failed.append(run_dir)
    return failed, waiting


def work(plans: list[str], entries: dict, extra: list[str]) -> int:
    """One worker: the plans in order, each run claimed by a lock; a plan whose dataset another worker is
    making, or with runs waiting on a run they need, is revisited until every plan is done or impossible."""
    lock_dir = ROOT / "runs" / "experiments" / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    pending, failed = list(plans), []
    while pending:
        for plan in list(pending):
            ready = dataset_ready(plan) or make_dataset_if_free(plan, lock_dir)
            if ready is None:
                continue
            if ready is False:
                print(f"cannot make {DATASETS[plan]}: skipping plan {plan}", flush=True)
                pending.remove(plan)
                failed.append(plan)
                continue
            failed_runs, waiting = run_plan(plan, entries[plan], extra)
            failed += failed_runs
            if not waiting:
                pending.remove(plan)
        if pending:
            time.sleep(10)
    return 1 if failed else 0


def spawn_workers(args) -> int:
    """Run this command as args.workers workers (one thread each), logs in runs/experiments/.logs/worker-<i>.log."""
    import os
    argv = ["--plan", *args.plan, "--seeds", *map(str, args.seeds), "--worker"]
    argv += ["--only", *args.only] if args.only else []
    argv += ["--set", *args.set] if args.set else []
    log_dir = ROOT / "runs" / "experiments" / ".logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    procs = []
    for k in range(args.workers):
        log = open(log_dir / f"worker-{k}.log", "a")
        procs.append(subprocess.Popen([sys.executable, __file__, *argv], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
        time.sleep(1)  # staggered: the first claims of each worker differ
    print(f"{args.workers} workers started; logs in {log_dir}", flush=True)
    return max(p.wait() for p in procs)


def plan_seeds(plan: str, seeds) -> list[int]:
    """seeds, and every seed the plan has a run directory or a record of."""
    found = {int(m.group(1)) for base in (ROOT / "runs" / "experiments" / plan, RECORDS / plan) if base.is_dir()
             for d in base.iterdir() if (m := re.fullmatch(r"[\w.-]+-seed(\d+)", d.name))}
    return sorted(set(seeds) | found)


def tabulated_runs(table: Path) -> list[str]:
    """The run names a results/<plan>.md lists in its wall-time line ('<name>-seed<k> <seconds> (<device>)')."""
    text = read_results_page(table)[0]
    line = next((ln for ln in text.splitlines() if ln.startswith("Training wall time")), "")
    return re.findall(r"([\w.-]+-seed\d+) [\d.]+ \(", line.partition(": ")[2])


def report(plan: str, entries, seeds) -> None:
    for run_dir, *_ in entries:
        if (run_dir / "report.json").is_file():
            keep_record(run_dir, RECORDS)
    finished = finished_runs(entries)
    if not finished:
        print(f"{plan}: no finished runs yet")
        return
    out = ROOT / "results" / f"{plan}.md"
    lost = sorted(set(tabulated_runs(out)) - {Path(d).name for d in finished})
    if lost:  # runs tabulated before records were kept, whose run directories are not on this machine
        print(f"{plan}: not rewriting {out}: it tabulates runs with neither a run directory nor a record in "
              f"results/records/{plan}/: {', '.join(lost)}")
        return
    from cleandiffuser.runner import aggregate_runs, format_aggregate
    rows = aggregate_runs(finished, labels={d: entry_name(d) for d in finished})
    table = format_aggregate(rows) + "\n" + behaviour_row(DATASETS[plan])
    reports = {d: json.loads((Path(d) / "report.json").read_text()) for d in finished}
    walls = {d: r.get("train_seconds") or last_log_wall(Path(d)) for d, r in reports.items()}
    write_results_page(out, f"# {plan}\n\nCommand: `python experiments/offline_queue.py --plan {plan} --seeds "
                   f"{' '.join(map(str, seeds))}`; dataset {DATASETS[plan]}; each run's config and "
                   f"environment are in results/records/{plan}/<run>/ (runs/experiments/{plan}/ on the machine "
                   f"that trained it holds its logs and checkpoints). The ms/action column was "
                   f"timed at the end of each run on shared hardware (CPU cores shared with other jobs, or one GPU "
                   f"shared by many runs); idle-machine acting latency is in results/bench_algorithms.md.\n\n"
                   f"{table}\n\n"
                   "Training wall time (s; summed over its sessions, else the wall_s of its log's last row) and "
                   "device of each run: "
                   + ", ".join(f"{Path(d).name} {w} ({trained_on(Path(d))})" for d, w in walls.items()) + "\n")
    print(table)
    print(f"\nwritten: {out}")


def plan_table(plan: str) -> tuple[dict[tuple[str, str], str], str | None]:
    """The cells of results/<plan>.md (written by --report): {(agent, sample steps): "mean ± SE (n=seeds)"}, and the
    behaviour data's score."""
    path = ROOT / "results" / f"{plan}.md"
    cells, behaviour = {}, None
    for line in read_results_page(path)[0].splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) != 8 or cols[0] in ("algo", "") or cols[0].startswith("-"):
            continue
        if cols[0] == "behaviour data":
            behaviour = cols[6].split()[0]
        else:
            cells[(cols[0], cols[2])] = f"{cols[6]} (n={cols[4]})"
    return cells, behaviour


def summary(plans: list[str], out: Path) -> None:
    """The seed-000 table in the paper's shape: one row per agent and sample-step setting, one column per plan's
    dataset, each cell mean ± SE over the finished seeds (n = seeds), read from the per-plan tables."""
    order = [name for name, *_ in _SEED000]
    tables = {plan: plan_table(plan) for plan in plans}
    keys = {k for cells, _ in tables.values() for k in cells}
    rows = sorted(keys, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1]))
    head = "| agent | sample steps | " + " | ".join(DATASETS[p] for p in plans) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(plans)]
    lines += [f"| {a} | {k} | " + " | ".join(tables[p][0].get((a, k), "-") for p in plans) + " |" for a, k in rows]
    lines.append("| behaviour data | - | " + " | ".join(tables[p][1] or "-" for p in plans) + " |")
    out.write_text("# Offline RL: the seed-000 table on the generated datasets\n\n"
                   f"Command: `python experiments/offline_queue.py --plan {' '.join(plans)} --summary` (it reads the "
                   "per-plan tables results/<plan>.md that `--report` writes). Normalized score, mean ± SE over "
                   "training seeds (n), 10 episodes per seed, 20,000 gradient steps per run (iql-60k: "
                   "60,000; the *-iql60k IDQL actors: 20,000 with that run's critic, fixed: seed 000's workflow; "
                   "idql-cd-from-edm-iql60k distills idql-edm-iql60k's EDM for all 20,000), "
                   "CPU-sized budgets (the papers train 1M-3M). Per-plan tables with wall times and devices: "
                   "results/<plan>.md.\n\n"
                   + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", choices=sorted(PLANS), nargs="+", required=True, help="one or more plans, run in order")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", help="names of plan entries to run (default: all)")
    ap.add_argument("--report", action="store_true", help="only aggregate finished runs")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for new runs, e.g. compile=false on a GPU (recorded in each run's config)")
    ap.add_argument("--workers", type=int, default=1,
                    help="run as this many workers sharing the plans (several trainings on one GPU or many cores)")
    ap.add_argument("--summary", action="store_true",
                    help="write results/offline-summary.md: the plans side by side (agents x datasets)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a spawned worker: no report
    args = ap.parse_args()
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    unknown = sorted(set(args.only or ()) - {name for plan in args.plan for name, *_ in PLANS[plan]})
    if unknown:
        ap.error(f"--only {' '.join(unknown)}: not entries of {' '.join(args.plan)} "
                 f"(entries: {' '.join(name for name, *_ in PLANS[args.plan[0]])})")
    entries = {plan: run_dirs(plan, args.seeds, args.only) for plan in args.plan}
    if args.summary:
        summary(args.plan, ROOT / "results" / "offline-summary.md")
        return 0
    rc = 0
    if not args.report:
        rc = spawn_workers(args) if args.workers > 1 else work(args.plan, entries, args.set)
    if not args.worker:  # the table covers the whole plan, whatever part of it --only / --seeds ran
        for plan in args.plan:
            seeds = plan_seeds(plan, args.seeds)
            report(plan, run_dirs(plan, seeds), seeds)
    return rc


if __name__ == "__main__":
    sys.exit(main())
