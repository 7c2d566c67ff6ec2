"""Run-directory conventions shared by the offline-RL and imitation trainers."""
from __future__ import annotations

from pathlib import Path
import shutil

__all__ = ["RECORD_FILES", "find_checkpoint", "finished_run", "keep_record", "latest_checkpoint"]

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


def keep_record(run_dir, record_dir) -> None:
    """Copy a finished run's small files (RECORD_FILES) to record_dir, e.g. a committed results/records/<plan>/<run>;
    its checkpoints and logs stay in the run directory."""
    run_dir, record_dir = Path(run_dir), Path(record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, record_dir / name)


def finished_run(run_dir, record_dir) -> Path | None:
    """The run directory if its report.json is there, else its record if that has one, else None."""
    for d in (Path(run_dir), Path(record_dir)):
        if (d / "report.json").is_file():
            return d
    return None
