"""Rollout videos: frames to a file, and offscreen rendering in a subprocess per GL backend.

Every evaluator that records a video (offline RL: :func:`cleandiffuser.env.evaluation.evaluate`;
imitation: the robosuite and Push-T evaluators) writes it through :func:`write_video`, and MuJoCo
scenes are rendered by :func:`render_in_subprocess`, so a missing GL library fails a child process
(a warning, no video) instead of the evaluation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

__all__ = ["gl_backends", "read_video", "render_in_subprocess", "write_video"]


def write_video(frames, path_stem, fps: int) -> Path:
    """Write uint8 frames (T, H, W, 3) to ``<path_stem>.mp4`` when imageio and imageio-ffmpeg are installed
    (``pip install -e ".[video]"``), else to ``<path_stem>.npz`` (``frames``, ``fps``). Returns the path."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be (T >= 1, H, W, 3), got {frames.shape}")
    frames = frames.astype(np.uint8, copy=False)
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the mp4 writer's backend)
    except ImportError:
        path = stem.with_suffix(".npz")
        np.savez_compressed(path, frames=frames, fps=int(fps))
        return path
    path = stem.with_suffix(".mp4")
    imageio.mimwrite(path, list(frames), fps=int(fps), macro_block_size=1)
    return path


def read_video(path) -> np.ndarray:
    """The frames (T, H, W, 3) of a file :func:`write_video` wrote (.npz, or .mp4 through imageio)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as f:
            return f["frames"]
    import imageio.v2 as imageio
    return np.stack(imageio.mimread(path, memtest=False))


def gl_backends() -> list[str]:
    """MuJoCo GL backends to try for offscreen rendering: the user's ``MUJOCO_GL``, then egl, then osmesa."""
    user = os.environ.get("MUJOCO_GL", "").strip().lower()
    return list(dict.fromkeys([b for b in (user, "egl", "osmesa") if b]))


def render_in_subprocess(worker: str, job: dict, timeout: float = 900.0) -> tuple[dict | None, str | None]:
    """Run ``worker`` ("package.module:function", which reads the JSON ``job`` from ``sys.argv[-1]`` and
    prints one JSON line last) in a child process under each GL backend in turn until one succeeds.
    Returns (that JSON, the backend), or (None, None) with a warning naming each backend's error."""
    module, _, func = worker.partition(":")
    errors = []
    for backend in gl_backends():
        env = dict(os.environ, MUJOCO_GL=backend)
        if backend in ("egl", "osmesa"):  # PyOpenGL must agree with MuJoCo's GL backend
            env["PYOPENGL_PLATFORM"] = backend
        cmd = [sys.executable, "-c", f"from {module} import {func}; {func}()", json.dumps(job)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            errors.append(f"{backend}: timed out after {timeout:.0f}s")
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            return json.loads(lines[-1]), backend
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        errors.append(f"{backend}: {tail[:300]}")
    warnings.warn("video rendering failed, continuing without video (MuJoCo offscreen rendering needs EGL or "
                  "OSMesa; set MUJOCO_GL): " + "; ".join(errors))
    return None, None
