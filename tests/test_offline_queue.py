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
    assert queue.run_plan(plan, entries, []) == ([], 0)
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


def test_the_table_covers_the_whole_plan_whatever_part_of_it_ran(queue, monkeypatch):
    plan = "halfcheetah-medium-cpu"
    for name, algo, seed, score in (("dbc", "dbc", 0, 40.0), ("dql", "dql", 1, 45.0), ("dql", "dql", 5, 47.0)):
        finish(queue.run_dir_of(plan, name, seed), algo, seed, score)
    monkeypatch.setattr(queue, "work", lambda *a: pytest.fail("--report trained"))
    monkeypatch.setattr("sys.argv", ["offline_queue.py", "--plan", plan, "--only", "dbc", "--seeds", "0", "--report"])
    assert queue.main() == 0
    table = (queue.ROOT / "results" / f"{plan}.md").read_text()
    assert "| dbc | halfcheetah-medium-cd-v0 | 5 | 20,000 | 1 |" in table
    assert "| dql | halfcheetah-medium-cd-v0 | 5 | 20,000 | 2 | 20 | 46.0 ± 1.0 |" in table  # seeds 1 and 5 too


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


def fake_trainer(calls: list):
    """subprocess.call stand-in: records the command and leaves a finished run (report + checkpoint)."""
    def call(cmd, cwd=None):
        calls.append(cmd)
        run_dir = Path(cmd[cmd.index("--run-dir") + 1])
        finish(run_dir, cmd[cmd.index("--run-dir") - 1], 0, 50.0)
        return 0
    return call


def test_a_run_that_needs_another_waits_for_it_and_gets_its_directory(queue, monkeypatch):
    plan = "hopper-medium-cpu"
    entries = queue.run_dirs(plan, [0], only=["idql-ddpm-iql60k"])
    assert [d.name for d, *_ in entries] == ["iql-60k-seed0", "idql-ddpm-iql60k-seed0"]  # --only adds what it needs
    chain = queue.run_dirs(plan, [0], only=["idql-cd-from-edm-iql60k"])  # and what those need, in order
    assert [d.name for d, *_ in chain] == ["iql-60k-seed0", "idql-edm-iql60k-seed0", "idql-cd-from-edm-iql60k-seed0"]
    critic, actor = (d for d, *_ in entries)

    import fcntl
    lock_dir = queue.ROOT / "runs" / "experiments" / plan / ".locks"
    lock_dir.mkdir(parents=True)
    held = open(lock_dir / "iql-60k-seed0.lock", "w")  # another worker is training the critic
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    calls = []
    monkeypatch.setattr(queue.subprocess, "call", fake_trainer(calls))
    assert queue.run_plan(plan, entries, []) == ([], 1) and calls == []  # the actor waits, not fails
    held.close()

    assert queue.run_plan(plan, entries, []) == ([], 0)
    assert [Path(c[c.index("--run-dir") + 1]) for c in calls] == [critic, actor]
    assert "steps=60000" in calls[0]
    assert "agent.critic_path=runs/experiments/hopper-medium-cpu/iql-60k-seed0" in calls[1]  # relative: portable


def test_a_needed_run_known_only_by_its_record_trains_again_and_a_failed_one_stops_its_dependents(queue, monkeypatch):
    plan = "hopper-medium-cpu"
    entries = queue.run_dirs(plan, [0, 1], only=["idql-ct-iql60k"])
    runs = {d.name: d for d, *_ in entries}
    for name in ("iql-60k-seed0", "iql-60k-seed1"):  # a fresh checkout: the critics exist as records only
        finish(runs[name], "iql", int(name[-1]), 80.0)
        queue.keep_record(runs[name], queue.RECORDS)
        for f in sorted(runs[name].rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    finish(runs["idql-ct-iql60k-seed1"], "idql", 1, 70.0)  # seed 1's actor is done: its critic is not retrained
    lock_dir = queue.ROOT / "runs" / "experiments" / plan / ".locks"
    calls = []
    monkeypatch.setattr(queue.subprocess, "call", fake_trainer(calls))
    assert queue.run_plan(plan, entries, []) == ([], 0)
    assert [Path(c[c.index("--run-dir") + 1]).name for c in calls] == ["iql-60k-seed0", "idql-ct-iql60k-seed0"]

    calls.clear()
    entries = queue.run_dirs(plan, [2], only=["idql-ct-iql60k"])
    (lock_dir / "iql-60k-seed2.failed").write_text("cmd\n")
    failed, waiting = queue.run_plan(plan, entries, [])
    assert [d.name for d in failed] == ["idql-ct-iql60k-seed2"] and waiting == 0 and calls == []


def test_a_finished_run_is_recorded_when_it_finishes_not_only_at_the_final_report(queue, monkeypatch):
    plan = "halfcheetah-medium-cpu"
    entries = queue.run_dirs(plan, [0], only=["dbc", "dql"])
    calls = []
    trainer = fake_trainer(calls)

    def call_then_stop(cmd, cwd=None):  # the second run is stopped by a signal: the session ends there
        return trainer(cmd, cwd) if not calls else -9

    monkeypatch.setattr(queue.subprocess, "call", call_then_stop)
    with pytest.raises(SystemExit, match="stopped by signal 9"):
        queue.run_plan(plan, entries, [])
    first = Path(calls[0][calls[0].index("--run-dir") + 1])
    assert (queue.RECORDS / plan / first.name / "report.json").is_file()
    assert sorted(p.name for p in (queue.RECORDS / plan).iterdir()) == [first.name]


def test_an_entry_may_only_refer_to_entries_of_its_plan(queue, monkeypatch):
    monkeypatch.setitem(queue.PLANS, "hopper-medium-cpu", [("a", "idql", ["agent.critic_path={nope}"])])
    with pytest.raises(ValueError, match=r"refer to \['nope'\], which are not entries of the plan"):
        queue.needs("hopper-medium-cpu", ["agent.critic_path={nope}"], 0)


def test_a_needed_run_whose_checkpoint_was_deleted_trains_again(queue, monkeypatch):
    plan = "hopper-medium-cpu"
    entries = queue.run_dirs(plan, [0], only=["idql-edm-iql60k"])
    critic = entries[0][0]
    finish(critic, "iql", 0, 90.0)
    (critic / "checkpoints" / "latest.ckpt").unlink()  # a report but nothing to load: it must not wait forever
    calls = []
    monkeypatch.setattr(queue.subprocess, "call", fake_trainer(calls))
    assert queue.run_plan(plan, entries, []) == ([], 0)
    assert [Path(c[c.index("--run-dir") + 1]).name for c in calls] == ["iql-60k-seed0", "idql-edm-iql60k-seed0"]
