"""experiments/imitation_queue.py records finished runs in results/records/, skips them on a checkout without their run
directories, trains a teacher known only by its record again when a new student needs its weights, and rewrites its
table without losing the rows of runs tabulated before records were kept."""
import json
import sys
from pathlib import Path

import pytest

from cleandiffuser.runner.rundir import NOTES_MARKER

STUDENTS = ["ctmp", "ctmp-5000", "ctmp-ode4", "ctmp-bins20", "ctmp-5000-ode4-bins20", "ctmp-ode4-t20000",
            "ctmp-3000-ode20-bins20-t20000-s1", "ctmp-3000-ode20-bins20-t20000-drop0"]


@pytest.fixture()
def queue(load_experiment, tmp_path, monkeypatch):
    q = load_experiment("imitation_queue")
    data = tmp_path / "can.hdf5"
    data.write_bytes(b"demos")
    monkeypatch.setattr(q, "dataset", lambda task: data)
    return q


def report(name: str, steps: int, success: float) -> dict:
    settings = ["1-step", "chain [0, 27, 53]"] if name.startswith("ctmp") else [
        "heun bins=80" if name.startswith("edm") else "ddim 15 steps"]
    return {"steps": steps, "rows": [{"setting": s, "nfe": 1 + i, "success_rate": success, "success_se": 0.05,
                                      "episodes": 50, "val_mse": 0.07, "ms_per_action": 9.0}
                                     for i, s in enumerate(settings)]}


def finish(run: Path, rep: dict) -> None:
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps(rep))
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest.ckpt").write_bytes(b"weights")


@pytest.mark.parametrize("name", ["edm", "edm-20000", "ddim", "ddim-20000", *STUDENTS])
def test_each_table_row_names_its_run(queue, name):
    steps = int(name.split("-")[1]) if name.split("-")[1:2] and name.split("-")[1].isdigit() else \
        queue.STEPS[name.split("-")[0]]
    for line in queue.table_rows(name, report(name, steps, 0.5), cover=False):
        assert queue.row_run(line) == name


def test_table_keeps_unrecorded_rows_and_regenerates_from_records(queue):
    out = queue.ROOT / "results" / "imitation-can.md"
    old = [queue.table_rows(n, report(n, 1500 if n.startswith("ctmp") else 5000, 0.3), cover=False)
           for n in ("edm", "ctmp-bins20")]  # tabulated before records were kept; their run directories are gone
    out.write_text("# old\n\n| policy | training steps | NFE |\n|---|---:|---:|\n" + "\n".join(old[0] + old[1])
                   + "\n" + NOTES_MARKER + "hand-written notes\n")
    base = queue.ROOT / "runs" / "experiments" / "imitation-can"
    finish(base / "edm", report("edm", 5000, 0.72))  # the teacher, trained again
    finish(base / "ctmp-5000-ode4-bins20", report("ctmp-5000-ode4-bins20", 5000, 0.7))
    table = queue.write_table("can")
    rows = table.splitlines()[2:]
    assert [queue.row_run(ln) for ln in rows] == ["edm", "ctmp-5000-ode4-bins20", "ctmp-5000-ode4-bins20",
                                                  "ctmp-bins20", "ctmp-bins20"]
    # the new teacher replaces the old row; the old student stays
    assert "0.72 ± 0.05" in rows[0] and rows[3:] == old[1]
    assert out.read_text().endswith(NOTES_MARKER + "hand-written notes\n")
    records = queue.ROOT / "results" / "records" / "imitation-can"
    assert sorted(p.name for p in records.iterdir()) == ["ctmp-5000-ode4-bins20", "edm"]
    assert not (records / "edm" / "checkpoints").exists()
    import shutil
    shutil.rmtree(base)
    assert queue.write_table("can") == table



def test_summary_takes_each_tasks_recipe_runs_from_its_table(queue):
    teacher, baseline, student = queue.HARD_RECIPE
    base = queue.ROOT / "runs" / "experiments" / "imitation-can"
    finish(base / teacher, report(teacher, 20000, 0.88))
    finish(base / baseline, report(baseline, 20000, 0.72))
    finish(base / student, report(student, 3000, 0.84))
    finish(base / "ctmp-6000-ode20-bins20-t20000", report("ctmp-6000-ode20-bins20-t20000", 6000, 0.1))  # not the recipe
    queue.write_table("can")
    (base / teacher / "report.json").write_text(json.dumps(report(teacher, 20000, 0.5)))  # the table is the source
    rows = {ln.split("|")[1].split()[0]: ln for ln in queue.write_summary().splitlines()[2:]}
    assert rows["can"] == ("| can | 20,000 / 20,000 / 3,000 | 0.88 ± 0.05, 9.0 ms | 0.72 ± 0.05, 9.0 ms | "
                           "0.84 ± 0.05, 9.0 ms | 0.84 ± 0.05, 9.0 ms | 1x |")
    assert rows["square"].count("not run") == 4 and list(rows) == list(queue.SUMMARY_TASKS)
    assert "| can | 20,000" in (queue.ROOT / "results" / "imitation-summary.md").read_text()

def test_recorded_runs_are_skipped_unless_a_student_needs_the_teacher(queue, monkeypatch):
    calls, commands = [], []

    def fake_train(cmd, cwd=None):
        run = Path(cmd[cmd.index("--run-dir") + 1])
        calls.append(run.name)
        commands.append(cmd)
        finish(run, report(run.name, next(int(c.split("=")[1]) for c in cmd if c.startswith("training.steps=")), 0.5))
        return 0

    monkeypatch.setattr(queue.subprocess, "call", fake_train)
    records = queue.RECORDS / "imitation-can"
    for name in ("edm", "ctmp", "ddim"):
        (records / name).mkdir(parents=True)
        (records / name / "report.json").write_text(json.dumps(report(name, queue.STEPS[name], 0.5)))
    monkeypatch.setattr(sys, "argv", ["imitation_queue.py", "--task", "can"])
    assert queue.main() == 0 and calls == []  # everything finished elsewhere: nothing to train
    monkeypatch.setattr(sys, "argv", ["imitation_queue.py", "--task", "can", "--ode-steps", "4"])
    assert queue.main() == 0 and calls == ["edm", "ctmp-ode4"]  # the new student needs the teacher's weights
    monkeypatch.setattr(sys, "argv", ["imitation_queue.py", "--task", "can", "--teacher-steps", "20000"])
    assert queue.main() == 0 and calls[2:] == ["edm-20000", "ctmp-t20000"]  # a longer teacher and its own student

    monkeypatch.setattr(sys, "argv", ["imitation_queue.py", "--task", "can", "--teacher-steps", "20000",
                                      "--student-seed", "1", "--only", "student"])
    assert queue.main() == 0 and calls[4:] == ["ctmp-t20000-s1"] and "seed=1" in commands[-1]

    monkeypatch.setattr(sys, "argv", ["imitation_queue.py", "--task", "can", "--baseline-steps", "20000",
                                      "--only", "ddim"])  # the baseline at the longer teacher's budget
    assert queue.main() == 0 and calls[5:] == ["ddim-20000"] and "training.steps=20000" in commands[-1]
    table = (queue.ROOT / "results" / "imitation-can.md").read_text()
    runs = [queue.row_run(line) for line in table.splitlines() if line.startswith("| ")]
    assert runs.index("ddim-20000") == runs.index("ddim") + 1 < runs.index("ctmp")  # baselines after the teachers


def test_a_finished_run_is_recorded_before_the_next_one_starts(queue, monkeypatch):
    records = queue.RECORDS / "imitation-can"
    calls = []

    def train_then_stop(cmd, cwd=None):  # the teacher finishes; the student's run is stopped (the session ends)
        run = Path(cmd[cmd.index("--run-dir") + 1])
        calls.append(run.name)
        if len(calls) > 1:
            raise KeyboardInterrupt
        finish(run, report(run.name, 1500, 0.5))
        return 0

    monkeypatch.setattr(queue.subprocess, "call", train_then_stop)
    monkeypatch.setattr(sys, "argv", ["imitation_queue.py", "--task", "can", "--only", "edm", "student"])
    with pytest.raises(KeyboardInterrupt):
        queue.main()
    assert calls == ["edm", "ctmp"] and (records / "edm" / "report.json").is_file()


@pytest.mark.parametrize("task", ["lift", "can", "square", "lift-image", "can-image", "square-image", "pusht"])
def test_each_task_composes_its_three_configs(load_experiment, task):
    """Every task's teacher, student and baseline configs load with the task's overrides: the image tasks see two
    cameras, the robosuite tasks roll out in their own environment."""
    from cleandiffuser.imitation.config import load_imitation_config
    q = load_experiment("imitation_queue")
    suffix = q.CONFIG_SUFFIX.get(task, "lift")
    for kind in ("edm", "ctmp", "ddim"):
        student = ["policy.teacher_path=runs/edm", "policy.edm=runs/edm"] if kind == "ctmp" else []
        cfg = load_imitation_config(f"imitation/{kind}_{suffix}", ["task.dataset_path=x.hdf5", *q.TASK[task], *student])
        rgb = [k for k, v in cfg.shape_meta.obs.items() if v.get("type") == "rgb"]
        assert len(rgb) == (2 if task.endswith("-image") else 0), (task, kind, rgb)
        if task != "pusht":
            assert cfg.task.name == q.robosuite_task(task)[0]
