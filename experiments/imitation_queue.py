"""Teacher -> student -> baseline imitation runs on a generated dataset, resumably.

    python experiments/imitation_queue.py --task lift            # run (or continue) the plan
    python experiments/imitation_queue.py --task lift --report   # table only
    python experiments/imitation_queue.py --task can --student-steps 5000   # a longer student, as ctmp-5000
    python experiments/imitation_queue.py --task can --ode-steps 4          # 4 teacher Heun steps per CTM target
    python experiments/imitation_queue.py --task can --student-bins 20      # a coarser grid for the student
    python experiments/imitation_queue.py --task can --student-seed 1       # the same student, training seed 1
    python experiments/imitation_queue.py --task pusht --teacher-steps 20000 --only edm  # a longer teacher, edm-20000
    python experiments/imitation_queue.py --task can --baseline-steps 20000 --only ddim  # DDIM at that budget
    python experiments/imitation_queue.py --task lift-image                 # Lift from two 84x84 cameras
    python experiments/imitation_queue.py --summary   # results/imitation-summary.md: every task, one row each

One queue per task at a time: runs are not locked, so two queues on one task would train the same run, unless
`--only` gives them disjoint runs (the baseline needs no teacher: `--only edm student` next to `--only ddim`).

Tasks: robosuite lift | can | square (robomimic-format HDF5, low-dim observations), lift-image | can-image |
square-image (agentview and eye-in-hand images plus proprioception, the *_lift_image.yaml configs) and Push-T
(pusht, Diffusion Policy zarr).
Runs go to runs/experiments/imitation-<task>/{edm,ctmp,ddim}; a finished run (report.json) is skipped
and an interrupted one resumed. Each finished run's record (report.json, config.yaml, environment.json) is copied to
results/records/imitation-<task>/<run>/ (committed), so the table regenerates, and finished runs are skipped, on a
checkout without the run directories; a new student still needs its teacher's weights, so a teacher known only by its
record is trained again. The demonstrations are made first when missing (200 scripted demos, 100 with
images, seed 0: cleandiffuser.datagen.robosuite_demos or cleandiffuser.datagen.pusht_demos). The table (Consistency
Policy paper Tables I/III in shape: success ± SE over the rollouts, NFE, ms per action) goes to
results/imitation-<task>.md.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cleandiffuser.runner.rundir import finished_run, keep_record, read_results_page, write_results_page

ROOT = Path(__file__).resolve().parents[1]
# CPU budgets (the paper trains hundreds of epochs on a GPU); the table states them
STEPS = {"edm": 5000, "ctmp": 1500, "ddim": 5000}  # the student starts as the teacher (warm start)
# per task: its observation sizes (object state: Lift 10, Can/Square 14) and a rollout horizon above its longest
# scripted demo (Lift 75, Can 284, Square 275 steps)
TASK = {"lift": [],
        "can": ["task.name=can", "shape_meta.obs.object.shape=[14]", "task.rollout_horizon=400"],
        "square": ["task.name=square", "shape_meta.obs.object.shape=[14]", "task.rollout_horizon=400"],
        "lift-image": [],  # its own config files (*_lift_image.yaml): the observation keys differ
        "can-image": ["task.name=can", "task.rollout_horizon=400"],  # the Lift image files: cameras + proprioception
        "square-image": ["task.name=square", "task.rollout_horizon=400"],
        "pusht": []}  # Push-T has its own config files (*_pusht.yaml); rollout horizon 300 as Diffusion Policy
# the rest use the Lift files + TASK overrides (the image tasks: the Lift image files)
CONFIG_SUFFIX = {"pusht": "pusht", "lift-image": "lift_image", "can-image": "lift_image", "square-image": "lift_image"}
COMMON = ["training.online_rollouts=true", "training.eval_episodes=50", "logging.keep_every=0",
          "logging.checkpoint_every=250"]


# student run-name parts: ctmp-5000-ode4-bins20-t20000-drop0-s1 (5,000 steps, policy.ode_steps_max=4, 20 bins,
# distilled from the teacher edm-20000, U-Net dropout 0 % instead of the paper's 20 %, training seed 1)
KNOB_LABEL = {"ode": "ode_steps_max", "bins": "bins", "t": "teacher steps", "drop": "dropout %", "s": "seed"}
RECORDS = ROOT / "results" / "records"


def budget_name(kind: str, steps: int) -> str:
    """A run's name from its kind (edm, ctmp, ddim) and budget: 'edm', or 'edm-20000' off the default budget."""
    return kind if steps == STEPS[kind] else f"{kind}-{steps}"


def student_name(steps: int, ode_steps: int = 1, bins: int | None = None, teacher_steps: int = STEPS["edm"],
                 seed: int = 0, dropout_pct: int | None = None) -> str:
    """The student's run name: ctmp, plus -<steps> off the default budget, -ode<N>, -bins<N>, -t<teacher steps>,
    -drop<percent> off the config's dropout, -s<seed> off seed 0."""
    name = budget_name("ctmp", steps)
    name += "" if ode_steps == 1 else f"-ode{ode_steps}"
    name += "" if bins is None else f"-bins{bins}"
    name += "" if teacher_steps == STEPS["edm"] else f"-t{teacher_steps}"
    name += "" if dropout_pct is None else f"-drop{dropout_pct}"
    return name + ("" if seed == 0 else f"-s{seed}")


def row_label(name: str, setting: str) -> str:
    """A table row's policy cell: the inference setting, with a student's knobs from its run name."""
    knobs = [student_knob(x) for x in name.split("-")[1:]] if name.startswith("ctmp") else []
    knobs = ", ".join(f"{KNOB_LABEL[k]} {v}" for k, v in knobs if k)
    return setting + (f" ({knobs})" if knobs else "")


def row_run(line: str) -> str | None:
    """Inverse of the table's rows: the run name a row came from ('| 1-step (bins 20) | 1,500 | ...' -> ctmp-bins20)."""
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 3 or not cells[1].replace(",", "").isdigit():
        return None  # the header or its rule
    setting, steps = cells[0], int(cells[1].replace(",", ""))
    if setting.startswith("heun"):
        return budget_name("edm", steps)
    if setting.startswith("ddim"):
        return budget_name("ddim", steps)
    m = re.search(r"\(([^()]*)\)$", setting)
    knobs = dict(kv.rsplit(" ", 1) for kv in m[1].split(", ")) if m else {}
    by_label = {label: key for key, label in KNOB_LABEL.items()}
    kw = {by_label[k]: int(v) for k, v in knobs.items()}
    return student_name(steps, kw.get("ode", 1), kw.get("bins"), kw.get("t", STEPS["edm"]), kw.get("s", 0),
                        kw.get("drop"))


def run_order(name: str) -> tuple:
    """Table order: teacher, baseline, then students by their run-name parts."""
    rank = 0 if name.startswith("edm") else 1 if name.startswith("ddim") else 2
    return (rank, [student_knob(x) for x in name.split("-")[1:]])


def student_knob(part: str) -> tuple[str, int]:
    """'ode4' -> ('ode', 4); '5000' (the training steps) -> ('', 5000)."""
    m = re.fullmatch(r"([a-z]*)(\d+)", part)
    if m is None or (m[1] and m[1] not in KNOB_LABEL):
        raise ValueError(f"unexpected student run-name part {part!r} (expected <steps>, ode<N>, bins<N>, t<N> or "
                         "s<N>)")
    return m[1], int(m[2])


def robosuite_task(task: str) -> tuple[str, bool]:
    """'lift-image' -> ('lift', True): the robosuite task and whether its observations are images."""
    return task.removesuffix("-image"), task.endswith("-image")


def dataset(task: str) -> Path:
    from cleandiffuser.datagen.registry import data_dir
    if task == "pusht":
        return data_dir() / "pusht" / "pusht-scripted-state.zarr"
    name, images = robosuite_task(task)
    return data_dir() / "robomimic" / f"{name}-scripted-{'image' if images else 'lowdim'}.hdf5"


def n_demos(task: str) -> int:
    return 100 if robosuite_task(task)[1] else 200  # rendering two cameras costs ~0.1 s per step here


def make_demos(task: str, out: Path) -> list[str]:
    if task == "pusht":
        return [sys.executable, "-m", "cleandiffuser.datagen.pusht_demos", "--n", "200", "--seed", "0",
                "--out", str(out)]
    name, images = robosuite_task(task)
    return [sys.executable, "-m", "cleandiffuser.datagen.robosuite_demos", "--task", name,
            *(["--images"] if images else []), "--n", str(n_demos(task)), "--seed", "0", "--out", str(out)]


def table_rows(name: str, rep: dict, cover: bool) -> list[str]:
    """A finished run's rows of the results table, one per inference setting it was evaluated at."""
    lines = []
    for row in rep.get("rows", []):
        sr, se = row.get("success_rate"), row.get("success_se")
        success = f"{sr:.2f} ± {se:.2f}" if sr is not None else "n/a"
        if cover:
            cov, cse = row.get("mean_max_coverage"), row.get("max_coverage_se")
            success += f" | {cov:.3f} ± {cse:.3f}" if cov is not None else " | n/a"
        lines.append(f"| {row_label(name, row.get('setting', name))} | {rep.get('steps', 0):,} | {row.get('nfe')} | "
                     f"{success} | {row.get('episodes', 'n/a')} | {row.get('val_mse', float('nan')):.4f} | "
                     f"{row.get('ms_per_action', float('nan')):.1f} |")
    return lines


def write_table(task: str) -> str:
    """Record each finished run of the task, then (re)write results/imitation-<task>.md from the runs and records.

    Rows of the existing table whose run has neither a directory nor a record here (runs tabulated before records
    were kept) are carried over as they are, so a checkout without them adds rows instead of losing them."""
    base = ROOT / "runs" / "experiments" / f"imitation-{task}"
    finished = [report.parent for report in base.glob("*/report.json")]
    for run in finished:
        keep_record(run, RECORDS)
    names = {run.name for run in finished} | {p.parent.name for p in (RECORDS / base.name).glob("*/report.json")}
    out = ROOT / "results" / f"imitation-{task}.md"
    old_text = read_results_page(out)[0]
    carried: dict[str, list[str]] = {}
    for line in old_text.splitlines():
        name = row_run(line) if line.startswith("|") else None
        if name is not None and name not in names:
            carried.setdefault(name, []).append(line)
    cover = task == "pusht"  # Push-T is scored by coverage in the papers; success = coverage >= 0.95
    lines = ["| policy | training steps | NFE | success (mean ± SE) | "
             + ("max coverage (mean ± SE) | " if cover else "")
             + "rollouts | val action MSE | ms per chunk (batch 1) |",
             "|---|---:|---:|---:|" + ("---:|" if cover else "") + "---:|---:|---:|"]
    for name in sorted(names | set(carried), key=run_order):
        if name in carried:
            lines += carried[name]
        else:
            rep = json.loads((finished_run(base / name, RECORDS) / "report.json").read_text())
            lines += table_rows(name, rep, cover)
    table = "\n".join(lines)
    robot_task, images = robosuite_task(task)
    kind = ("Push-T demos (state observations)" if task == "pusht" else
            f"robosuite {robot_task} demos " + ("(agentview + eye-in-hand 84x84 images, proprioception)" if images
                                                else "(low-dim observations)"))
    demos = " ".join(["python", *make_demos(task, dataset(task))[1:-1], "..."])
    write_results_page(out, f"# Imitation on scripted {kind}\n\nCommand: "
                   f"`python experiments/imitation_queue.py --task {task}`; data: {n_demos(task)} scripted demos "
                   f"(`{demos}`); CPU budgets {STEPS}; each recorded run's config and environment are in "
                   f"results/records/imitation-{task}/<run>/ (kept since session 11; "
                   f"runs/experiments/imitation-{task}/ on the machine that trained it holds its logs and "
                   f"checkpoints).\n\n{table}\n")
    print(table)
    return table


# the summary's runs per task (teacher, baseline, student): Lift is solved at the default budgets; the harder tasks
# take the 20,000-step teacher and baseline and the student docs/imitation.md recommends (3,000 steps, 20 bins, 20
# teacher Heun steps per CTM target, no dropout)
SUMMARY_TASKS = ("lift", "can", "square", "pusht", "lift-image", "can-image", "square-image")
HARD_RECIPE = (budget_name("edm", 20000), budget_name("ddim", 20000), student_name(3000, 20, 20, 20000, 0, 0))
SUMMARY_RUNS = {t: ("edm", "ddim", "ctmp") if t.startswith("lift") else HARD_RECIPE for t in SUMMARY_TASKS}
# the summary's columns: (run index in SUMMARY_RUNS, the row's setting prefix, header)
SUMMARY_COLUMNS = [(0, "heun bins=80", "EDM teacher, Heun 80 bins (NFE 159)"), (1, "ddim", "DDIM 15 steps"),
                   (2, "1-step", "CP 1-step"), (2, "chain", "CP 3-step (chained)")]


def table_cells(task: str) -> dict[tuple[str, str], dict[str, str]]:
    """(run name, setting) -> the row's cells by column header, from the task's table results/imitation-<task>.md."""
    header, cells = None, {}
    for line in read_results_page(ROOT / "results" / f"imitation-{task}.md")[0].splitlines():
        if not line.startswith("|"):
            continue
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = row
        elif (name := row_run(line)) is not None:
            setting = re.sub(r" \([^()]*\)$", "", row[0])  # the policy cell without a student's knobs
            cells[(name, setting)] = dict(zip(header, row))
    return cells


def summary_cell(row: dict[str, str] | None, cover: bool) -> str:
    if row is None:
        return "not run"
    score = row["max coverage (mean ± SE)"] + " cov." if cover else row["success (mean ± SE)"]
    return f"{score}, {float(row['ms per chunk (batch 1)']):.1f} ms"


def write_summary(out: Path | None = None) -> str:
    """results/imitation-summary.md: the Consistency Policy paper's Table I in shape, one row per task, from the
    per-task tables (their rows stay the source: a task's table must be regenerated first)."""
    lines = ["| task | training steps (teacher / DDIM / student) | "
             + " | ".join(h for *_, h in SUMMARY_COLUMNS) + " | 1-step speed-up |",
             "|---|---|" + "---:|" * (len(SUMMARY_COLUMNS) + 1)]
    for task in SUMMARY_TASKS:
        cells, runs, cover = table_cells(task), SUMMARY_RUNS[task], task == "pusht"
        found = [next((row for (name, setting), row in cells.items() if name == runs[i] and setting.startswith(prefix)),
                      None) for i, prefix, _ in SUMMARY_COLUMNS]
        steps = " / ".join(next((r["training steps"] for r, (j, *_) in zip(found, SUMMARY_COLUMNS) if j == i and r),
                                "-") for i in range(3))
        ms = [float(r["ms per chunk (batch 1)"]) if r else None for r in found]
        speedup = f"{ms[0] / ms[2]:.0f}x" if ms[0] and ms[2] else "-"
        lines.append(f"| {task}{' (coverage)' if cover else ''} | {steps} | "
                     + " | ".join(summary_cell(r, cover) for r in found) + f" | {speedup} |")
    table = "\n".join(lines)
    recipe = ", ".join(HARD_RECIPE)
    write_results_page(out or ROOT / "results" / "imitation-summary.md",
                       "# Imitation: Consistency Policy against its teacher and DDIM (the paper's Table I in shape)\n\n"
                       "Command: `python experiments/imitation_queue.py --summary` (it reads the per-task tables "
                       "results/imitation-<task>.md, where each row's run, budget, rollouts and validation error are). "
                       "Success rate ± standard error over 50 rollouts (Push-T: mean max coverage ± SE; its success "
                       "rates are in its table), and milliseconds per predicted chunk at batch 1 on this CPU (one "
                       "thread, timed at the end of each run while another job shared the machine: they order the "
                       "policies; results/bench_imitation.md times them back to back on a quiet machine). Runs: "
                       "Lift and Lift-image at the default budgets (edm, ddim, ctmp); the other tasks "
                       f"{recipe}. 'not run': no finished run is on record (the task's page says why).\n\n{table}\n")
    print(table)
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASK), default="lift")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--summary", action="store_true",
                    help="write results/imitation-summary.md from the tasks' tables (run nothing)")
    ap.add_argument("--student-steps", type=int, default=STEPS["ctmp"],
                    help=f"Consistency Policy student budget; other than {STEPS['ctmp']} it trains as ctmp-<steps>")
    ap.add_argument("--ode-steps", type=int, default=1,
                    help="student's teacher Heun steps per CTM target (policy.ode_steps_max); other than 1 it trains "
                         "as ctmp[-<steps>]-ode<N>")
    ap.add_argument("--teacher-steps", type=int, default=STEPS["edm"],
                    help=f"the EDM teacher's budget; other than {STEPS['edm']} it trains as edm-<steps>, and its "
                         "students as ctmp[...]-t<steps>")
    ap.add_argument("--student-bins", type=int, default=None,
                    help="the student's discretization (policy.noise_scheduler.bins; the teacher's 80 by default); "
                         "set, it trains as ctmp[-<steps>][-ode<N>]-bins<N>")
    ap.add_argument("--student-seed", type=int, default=0,
                    help="the student's training seed (the teacher's stays 0, and so does the episode split); other "
                         "than 0 it trains as ctmp[...]-s<N>")
    ap.add_argument("--student-dropout", type=int, default=None, metavar="PERCENT",
                    help="the student U-Net's dropout in percent (policy.dropout; the paper's 20 by default); set, "
                         "it trains as ctmp[...]-drop<PERCENT>")
    ap.add_argument("--baseline-steps", type=int, default=STEPS["ddim"],
                    help=f"the DDIM baseline's budget; other than {STEPS['ddim']} it trains as ddim-<steps> (match "
                         "--teacher-steps to compare at the teacher's budget)")
    ap.add_argument("--only", nargs="+", choices=("edm", "student", "ddim"), default=("edm", "student", "ddim"),
                    help="train only these runs (edm = the teacher; the student needs a finished teacher)")
    args = ap.parse_args()
    if args.summary:
        write_summary()
        return 0
    base = ROOT / "runs" / "experiments" / f"imitation-{args.task}"
    data = dataset(args.task)
    if not args.report:
        if not data.exists():
            subprocess.check_call(make_demos(args.task, data), cwd=ROOT)
        teacher = base / budget_name("edm", args.teacher_steps)
        suffix = CONFIG_SUFFIX.get(args.task, "lift")
        student = student_name(args.student_steps, args.ode_steps, args.student_bins, args.teacher_steps,
                               args.student_seed, args.student_dropout)
        knobs = [] if args.student_bins is None else [f"policy.noise_scheduler.bins={args.student_bins}"]
        knobs += [] if args.student_seed == 0 else [f"seed={args.student_seed}"]
        knobs += [] if args.student_dropout is None else [f"policy.dropout={args.student_dropout / 100}"]
        plan = [("edm", teacher.name, f"imitation/edm_{suffix}", args.teacher_steps, []),
                ("student", student, f"imitation/ctmp_{suffix}", args.student_steps,
                 [f"policy.teacher_path={teacher}", f"policy.edm={teacher}", f"policy.ode_steps_max={args.ode_steps}",
                  *knobs]),
                ("ddim", budget_name("ddim", args.baseline_steps), f"imitation/ddim_{suffix}", args.baseline_steps, [])]
        for role, name, config, steps, extra in plan:
            run = base / name
            if role not in args.only or (run / "report.json").is_file():
                continue
            if finished_run(run, RECORDS) is not None:  # finished on another machine: its record is committed
                if not (role == "edm" and "student" in args.only
                        and finished_run(base / student, RECORDS) is None):
                    continue
                print(f"{run} is known only by its record and the student {student} needs its weights: training "
                      "the teacher again", flush=True)
            if role == "student" and not (teacher / "report.json").is_file():
                print(f"the student needs a finished teacher ({teacher}): run the queue with edm first", flush=True)
                return 1
            cmd = [sys.executable, "-m", "cleandiffuser.cli", "train", "--no-progress"]
            if run.exists() and not (run / "checkpoints" / "latest.ckpt").is_file():
                shutil.rmtree(run)  # stopped before its first checkpoint: nothing to resume
            if (run / "checkpoints" / "latest.ckpt").is_file():
                cmd += ["--resume", str(run)]
            else:
                cmd += ["--config-name", config, "--run-dir", str(run), f"task.dataset_path={data}",
                        f"training.steps={steps}", f"logging.name={name}_{args.task}", *COMMON, *TASK[args.task],
                        *extra]
            print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd)}", flush=True)
            if subprocess.call(cmd, cwd=ROOT) != 0:
                print(f"run failed: {run}", flush=True)
                return 1
            if (run / "report.json").is_file():  # recorded now: a session stopped midway keeps every finished run
                keep_record(run, RECORDS)
    write_table(args.task)
    return 0

if __name__ == "__main__":
    sys.exit(main())
