"""experiments/offline_queue.py keeps each finished run's record in results/records/, so a checkout without the run
directories still skips finished runs and regenerates its tables, and never rewrites a table from fewer runs."""
import json
from pathlib import Path

import pytest

from cleandiffuser.runner.rundir import NOTES_MARKER


@pytest.fixture()
def queue(load_experiment, monkeypatch):
    q = load_experiment("offline_queue")
    monkeypatch.setattr(q, "behaviour_row", lambda dataset: "| behaviour data | x | - | - | - | 1 | 40.0 | - |")
    return q


def finish(run_dir: Path, algo: str, seed: int, score: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text(json.dumps({
        "algo": algo, "dataset": "halfcheetah-medium-cd-v0", "seed": seed, "steps": 20000, "train_seconds": 12.5,
        "rows": [{"sample_steps": 5, "score_mean": score, "episodes": 10, "ms_per_action": 1.0}]}))
    (run_dir / "config.yaml").write_text(f"algo: {algo}\nseed: {seed}\n")
    (run_dir / "environment.json").write_text(json.dumps({"device": "cpu"}))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "latest.ckpt").write_bytes(b"weights")


def test_records_survive_the_run_directories_and_finished_runs_are_skipped(queue, monkeypatch):
    plan = "halfcheetah-medium-cpu"
    entries = [e for e in queue.run_dirs(plan, [0, 1]) if queue.entry_name(e[0]) == "dbc"]
    for (run_dir, *_), score in zip(entries, (40.0, 44.0)):
        finish(run_dir, "dbc", int(run_dir.name[-1]), score)
    queue.report(plan, entries, [0, 1])
    table = (queue.ROOT / "results" / f"{plan}.md").read_text()
    assert "| dbc | halfcheetah-medium-cd-v0 | 5 | 20,000 | 2 | 20 | 42.0 ± 2.0 |" in table
    record = queue.RECORDS / plan / "dbc-seed0"
    assert sorted(p.name for p in record.iterdir()) == ["config.yaml", "environment.json", "report.json"]

    for run_dir, *_ in entries:  # a fresh checkout: the run directories are gone
        for f in sorted(run_dir.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        run_dir.rmdir()
    assert [Path(d) for d in queue.finished_runs(entries)] == [queue.RECORDS / plan / "dbc-seed0",
                                                               queue.RECORDS / plan / "dbc-seed1"]
    monkeypatch.setattr(queue.subprocess, "call", lambda *a, **k: pytest.fail(f"retrained a finished run: {a}"))
    assert queue.run_plan(plan, entries, []) == []
    out = queue.ROOT / "results" / f"{plan}.md"
    out.write_text("# stale\n" + NOTES_MARKER + "hand-written notes\n")
    queue.report(plan, entries, [0, 1])  # the table regenerates from the records alone; the notes stay
    assert "42.0 ± 2.0" in out.read_text() and "stale" not in out.read_text()
    assert out.read_text().endswith(NOTES_MARKER + "hand-written notes\n")


def test_a_table_is_not_rewritten_from_fewer_runs_than_it_lists(queue, capsys):
    plan = "halfcheetah-medium-cpu"
    out = queue.ROOT / "results" / f"{plan}.md"
    out.write_text("# old\n\n| table |\n\nTraining wall time (s; ...) and device of each run: dbc-seed0 578.8 (cpu), "
                   "dql-seed1 804.0 (NVIDIA H100 80GB HBM3)\n")
    assert queue.tabulated_runs(out) == ["dbc-seed0", "dql-seed1"]
    entries = [e for e in queue.run_dirs(plan, [0, 1]) if queue.entry_name(e[0]) in ("dbc", "dql")]
    run = {d.name: d for d, *_ in entries}
    finish(run["dbc-seed0"], "dbc", 0, 40.0)  # dql-seed1 has neither a run directory nor a record
    queue.report(plan, entries, [0, 1])
    assert "not rewriting" in capsys.readouterr().out and out.read_text().startswith("# old")
    finish(run["dql-seed1"], "dql", 1, 45.0)
    queue.report(plan, entries, [0, 1])
    assert "| dql |" in out.read_text() and (queue.RECORDS / plan / "dql-seed1" / "report.json").is_file()


def test_summary_puts_the_plan_tables_side_by_side(queue):
    plan = "halfcheetah-medium-cpu"
    entries = [e for e in queue.run_dirs(plan, [0, 1]) if queue.entry_name(e[0]) == "dbc"]
    for (run_dir, *_), score in zip(entries, (40.0, 44.0)):
        finish(run_dir, "dbc", int(run_dir.name[-1]), score)
    queue.report(plan, entries, [0, 1])
    out = queue.ROOT / "results" / "offline-summary.md"
    queue.summary([plan, "hopper-medium-cpu"], out)  # hopper-medium has no table: its column stays empty
    assert "| dbc | 5 | 42.0 ± 2.0 (n=2) | - |" in out.read_text()
    assert "| behaviour data | - | 40.0 | - |" in out.read_text()
