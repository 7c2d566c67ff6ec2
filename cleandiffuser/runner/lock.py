"""One writer at a time: advisory locks on run directories and on files being generated.

A lock is an `flock` on a small lock file (a run directory's `.lock`, a dataset's `.NAME.lock` beside it), so
the operating system drops it when its process dies: a killed run leaves no stale lock, and the next run needs
no clean-up. The holder writes its PID into the file, for the message a second writer gets. The lock file itself
stays (deleting it would let two processes lock two different files of one name).

    with lock_run_dir(run_dir):        # RunLockedError if another live process trains there
        ...
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not protected against a second writer
    fcntl = None

__all__ = ["RUN_LOCK_NAME", "RunDirLock", "RunLockedError", "file_lock", "lock_path_for", "lock_run_dir"]

RUN_LOCK_NAME = ".lock"


class RunLockedError(FileExistsError):
    """Another live process holds the lock of a run directory (or of a file it is generating)."""


def lock_path_for(path) -> Path:
    """The lock file guarding a generated file: `.NAME.lock` in the same directory."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _holder_pid(fd: int) -> str:
    """The PID the holder wrote into the lock file ("unknown" while it has not written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextmanager
def file_lock(lock_file, target, activity: str, wait: bool = False):
    """Hold an exclusive flock on `lock_file` for the block. When another process holds it: wait for it
    (`wait`), or raise RunLockedError saying "<target>: another process (pid N) is <activity>"."""
    lock_file = Path(lock_file)
    if fcntl is None:
        yield
        return
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)  # no O_TRUNC: the holder's PID stays readable
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RunLockedError(f"{target}: another process (pid {_holder_pid(fd)}) is {activity}; wait for it "
                                 f"to finish or stop it (the lock {lock_file} goes with its process)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def lock_run_dir(run_dir):
    """Context manager: the run directory's lock (run_dir/.lock; run_dir must exist)."""
    return file_lock(Path(run_dir) / RUN_LOCK_NAME, run_dir, "training in this run directory")


class RunDirLock:
    """A trainer's hold on its run directory, taken once: as soon as the directory exists (`take_if_exists`, so
    a second writer is refused before any work), at the latest before the first write (`take`, which creates
    the directory). Released on exit; `enabled=False` (DDP ranks other than 0, which write nothing) holds none."""

    def __init__(self, run_dir, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self._held = None

    def take_if_exists(self) -> None:
        if self.run_dir.is_dir():
            self.take()

    def take(self) -> None:
        """Create the directory if needed and lock it (no-op when held already or not enabled)."""
        if not self.enabled or self._held is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        held = lock_run_dir(self.run_dir)
        held.__enter__()
        self._held = held

    @property
    def held(self) -> bool:
        return self._held is not None

    def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held.__exit__(None, None, None)

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
