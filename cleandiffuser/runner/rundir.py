"""Run-directory conventions shared by the offline-RL and imitation trainers."""
from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["RECORD_FILES", "find_checkpoint", "finished_run", "keep_record", "latest_checkpoint", "read_results_page",
           "record_path", "remove_stale_temp_files", "write_results_page"]

# what a finished run's record keeps (a few KB): enough to tabulate it and to say how and where it was trained
RECORD_FILES = ("report.json", "config.yaml", "environment.json")


def latest_checkpoint(run_dir, resume: bool) -> Path:
    """run_dir/checkpoints/latest.ckpt, checked against the intent: resuming needs it, a new run must not
    overwrite it."""
    run_dir = Path(run_dir)
    latest = run_dir / "checkpoints" / "latest.ckpt"
    if resume and not latest.is_file():
        raise FileNotFoundError(f"cannot resume: {latest} does not exist")
    if not resume and latest.is_file():
        raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume {run_dir} "
                              "or choose another --run-dir")
    return latest


def remove_stale_temp_files(directory) -> list[Path]:
    """Delete the temporary files (.NAME.XXXXXXXX.tmp) of atomic writes whose writer died mid-write; returns them.
    Call it only while holding the run directory's lock: then no live writer is using one."""
    directory = Path(directory)
    stale = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def find_checkpoint(path) -> Path:
    """A checkpoint file, or a run directory (its checkpoints/latest.ckpt)."""
    path = Path(path)
    if path.is_dir():
        latest = path / "checkpoints" / "latest.ckpt"
        if not latest.is_file():
            raise FileNotFoundError(f"{path} has no checkpoints/latest.ckpt; is it a run directory of "
                                    "`cleandiffuser train`?")
        return latest
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint or run directory not found: {path}")
    return path


def record_path(run_dir, records) -> Path:
    """Where the record of run_dir (<plan>/<run>) lives under a records folder: records/<plan>/<run>."""
    run_dir = Path(run_dir)
    return Path(records) / run_dir.parent.name / run_dir.name


def keep_record(run_dir, records) -> None:
    """Copy a finished run's small files (RECORD_FILES) to its record_path under records (e.g. the committed
    results/records); its checkpoints and logs stay in the run directory."""
    out = record_path(run_dir, records)
    out.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (Path(run_dir) / name).is_file():
            shutil.copyfile(Path(run_dir) / name, out / name)


def finished_run(run_dir, records) -> Path | None:
    """The run directory if its report.json is there, else its record under records if that has one, else None."""
    for d in (Path(run_dir), record_path(run_dir, records)):
        if (d / "report.json").is_file():
            return d
    return None


# a results page (results/<plan>.md) is a generated table, then this marker, then hand-written notes
NOTES_MARKER = "\n<!-- notes: kept when --report rewrites the table above -->\n"


def read_results_page(path) -> tuple[str, str]:
    """(generated part, hand-written notes) of a results page; ('', '') where there is none."""
    path = Path(path)
    generated, _, notes = path.read_text().partition(NOTES_MARKER) if path.is_file() else ("", "", "")
    return generated, notes


def write_results_page(path, generated: str) -> None:
    """Rewrite a results page's generated part; its hand-written notes stay."""
    notes = read_results_page(path)[1]
    Path(path).write_text(generated + (NOTES_MARKER + notes if notes else ""))
