"""Push-T (Diffusion Policy's 2-D pushing task, ``gym_pusht/PushT-v0`` from the ``gym-pusht`` package): the
environment, episodes from seeded resets, replay, policy evaluation and rollout videos.

A circular agent (radius 15) pushes a T-shaped block into a fixed goal pose.

* observation (``obs_type="state"``): ``[agent_x, agent_y, block_x, block_y, block_angle]``,
  positions in [0, 512] (pymunk world = image pixels, y down), the block pose is its body
  origin (the middle of the top edge of the T's bar) and angle mod 2*pi;
* action: the agent's target position in [0, 512]^2; a PD controller (kp=100, kv=20,
  10 physics substeps of 0.01 s per 0.1 s control step) drives the kinematic agent there;
* reward: ``clip(coverage / 0.95, 0, 1)`` where ``coverage`` = area(block intersect goal T) /
  area(T); the episode terminates (success) when ``coverage > 0.95``; gymnasium's TimeLimit
  truncates at 300 steps. The goal pose is fixed: ``(256, 256, pi/4)``.
* physics: frictionless contacts, space damping 0 (the block's velocity is reset every
  substep, so it moves only while pushed: quasi-static pushing), walls at 5 / 506.

This module provides

* :func:`make_env`, :func:`reset_seeds` (seeded episode starts), :func:`run_episode` (one episode of a policy,
  optionally recorded in Diffusion Policy's per-step rows), :func:`replay_actions` (reproduces an episode exactly);
* :func:`block_keypoints` - the block keypoints Diffusion Policy's files store;
* :func:`evaluate_pusht` - success rate and max coverage (+- standard errors) of any
  ``policy_fn(obs (5,)) -> action (2,)``, or of a batch policy on ``n_envs`` envs stepping in lockstep, with an
  optional video of episode 0 (:func:`render_replay`).

A scripted pusher and demonstration datasets are in :mod:`cleandiffuser.datagen.pusht_demos`.

Install: ``pip install 'gym-pusht>=0.1.8,<0.2'`` (tested 0.1.8; pulls pymunk<7, pygame, shapely, opencv-python;
it pins nothing that conflicts with numpy 2 / gymnasium 1.x). Rendering needs no display.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "ENV_ID",
    "GOAL_POSE",
    "MAX_STEPS",
    "SUCCESS_THRESHOLD",
    "block_keypoints",
    "evaluate_pusht",
    "make_env",
    "render_replay",
    "replay_actions",
    "reset_seeds",
    "rotation_2d",
    "run_episode",
]

ENV_ID = "gym_pusht/PushT-v0"
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
SUCCESS_THRESHOLD = 0.95  # coverage, as in the env (strictly greater)
MAX_STEPS = 300


def rotation_2d(theta: float) -> np.ndarray:
    """The 2x2 matrix rotating by ``theta`` (radians)."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


# ---------------------------------------------------------------------------- keypoints
_KP_LOCAL: np.ndarray | None = None


def _block_keypoints_local() -> np.ndarray:
    """DP's ``PymunkKeypointManager.create_from_pusht_env(n_block_kps=9, seed=0)`` for the block:
    render the tee at (256, 300, 0) on a white 512x512 surface, farthest-point-sample 9 of its
    pixels (in the block frame) from a random start, add a U(0, 1) jitter."""
    global _KP_LOCAL
    if _KP_LOCAL is None:
        _import_gym_pusht()
        import pygame
        import pymunk
        from gym_pusht.envs.pusht import PushTEnv
        from gym_pusht.envs.pymunk_override import DrawOptions

        rng = np.random.default_rng(seed=0)
        space = pymunk.Space()
        body, _ = PushTEnv.add_tee(space, (256, 300), 0)
        screen = pygame.Surface((512, 512))
        screen.fill(pygame.Color("white"))
        space.debug_draw(DrawOptions(screen))
        img = np.uint8(pygame.surfarray.array3d(screen).transpose(1, 0, 2))
        mask = (img != np.array([255, 255, 255], dtype=np.uint8)).any(axis=-1)
        xy = np.moveaxis(np.indices((512, 512)), 0, -1)[:, :, ::-1].astype(float)  # (x, y) per pixel
        pos, ang = np.array(body.position), float(body.angle)
        local = (xy[mask] - pos) @ rotation_2d(ang)  # inverse of the affine map local -> world
        chosen = [local[rng.choice(len(local))]]
        for _ in range(8):
            d = np.linalg.norm(local[:, None, :] - np.asarray(chosen)[None], axis=-1).min(axis=1)
            chosen.append(local[np.argmax(d)])
        kps = np.asarray(chosen) + rng.uniform(0, 1, size=(9, 2))
        _KP_LOCAL = kps
    return _KP_LOCAL


def block_keypoints(state: np.ndarray) -> np.ndarray:
    """(..., 9, 2) block keypoints for state(s) (..., 5), like DP's ``keypoint`` array."""
    state = np.asarray(state, dtype=np.float64)
    kp = _block_keypoints_local()
    c, s = np.cos(state[..., 4]), np.sin(state[..., 4])
    x = c[..., None] * kp[:, 0] - s[..., None] * kp[:, 1] + state[..., 2, None]
    y = s[..., None] * kp[:, 0] + c[..., None] * kp[:, 1] + state[..., 3, None]
    return np.stack([x, y], axis=-1)


# ---------------------------------------------------------------------------- environment
def _import_gym_pusht():
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Push-T needs the 'gym-pusht' package: pip install 'gym-pusht>=0.1.8,<0.2'") from e
    import gymnasium

    return gymnasium


def make_env(obs_type: str = "state", max_steps: int = MAX_STEPS, **kwargs):
    """``gymnasium.make("gym_pusht/PushT-v0", obs_type=..., max_episode_steps=max_steps)``."""
    gym = _import_gym_pusht()
    return gym.make(ENV_ID, obs_type=obs_type, max_episode_steps=int(max_steps), **kwargs)


def reset_seeds(seed: int, n: int, offset: int = 0, stream: int = 0) -> list[int]:
    """Env reset seeds ``offset .. offset+n-1`` derived from a master ``seed``.

    ``stream`` 0 is used by
    :func:`cleandiffuser.datagen.pusht_demos.generate_pusht_demos`, 1 by :func:`evaluate_pusht`, so
    evaluating with the demos' seed does not replay the demos' initial states.
    """
    return [int(np.random.SeedSequence([int(seed), int(stream), i]).generate_state(1)[0])
            for i in range(int(offset), int(offset) + int(n))]



# ---------------------------------------------------------------------------- rollouts
class _Episode:
    """One Push-T episode from ``env.reset(seed=reset_seed)``, stepped one action at a time
    (:func:`run_episode` and the lockstep rollouts of :func:`evaluate_pusht` share it)."""

    def __init__(self, env, reset_seed: int, max_steps: int = MAX_STEPS, record: bool = False):
        self.env, self.max_steps, self.rec = env, int(max_steps), record
        self.obs, self.info = env.reset(seed=int(reset_seed))
        self.states, self.actions, self.contacts = [], [], []
        self.max_cov, self.cov, self.success, self.t = 0.0, 0.0, False, 0

    def step(self, action) -> bool:
        """Apply one action (cast to float32, as stored); True when the episode is over."""
        a = np.asarray(action, dtype=np.float64).reshape(2).astype(np.float32)
        if self.rec:
            self.states.append(np.asarray(self.obs, dtype=np.float64))
            self.actions.append(a)
            self.contacts.append(self.info.get("n_contacts", 0))
        self.obs, _, terminated, truncated, self.info = self.env.step(a)
        self.t += 1
        self.cov = float(self.info["coverage"])
        self.max_cov = max(self.max_cov, self.cov)
        self.success = bool(terminated)
        return bool(terminated or truncated) or self.t >= self.max_steps

    def record(self) -> dict:
        out = {"success": self.success, "max_coverage": self.max_cov, "final_coverage": self.cov, "length": self.t}
        if self.rec:
            st = np.asarray(self.states, dtype=np.float64)
            out["state"] = st.astype(np.float32)
            out["action"] = np.asarray(self.actions, dtype=np.float32)
            out["keypoint"] = block_keypoints(st).astype(np.float32)
            out["n_contacts"] = np.asarray(self.contacts, dtype=np.float32).reshape(-1, 1)
        return out


def run_episode(env, policy_fn: Callable[[np.ndarray], np.ndarray], reset_seed: int, max_steps: int = MAX_STEPS,
                record: bool = False) -> dict:
    """One episode from ``env.reset(seed=reset_seed)`` (a ``obs_type="state"`` env); stops on
    success (coverage > 0.95) or after ``max_steps`` steps. Actions are cast to float32 before
    stepping (as stored), so replaying stored actions reproduces the episode bit for bit.

    Returns ``success``, ``max_coverage``, ``final_coverage``, ``length`` and, with ``record``,
    Diffusion Policy's per-step rows (row t = observation before action t): ``state (T, 5)``,
    ``action (T, 2)``, ``keypoint (T, 9, 2)``, ``n_contacts (T, 1)`` (float32; ``n_contacts``
    of row t is the env's count over the step that led to observation t, as in DP's recorder).
    """
    ep = _Episode(env, reset_seed, max_steps, record)
    if int(max_steps) > 0:
        while not ep.step(policy_fn(ep.obs)):
            pass
    return ep.record()


def replay_actions(actions: np.ndarray, reset_seed: int, env=None, obs_type: str = "state") -> dict:
    """Reset to ``reset_seed`` and replay ``actions (T, 2)`` (stopping early only if the env
    terminates). Returns ``obs`` (list of the T observations before each action), ``coverage (T,)``
    after each step, ``max_coverage``, ``success`` and ``n_steps``."""
    own = env is None
    if own:
        env = make_env(obs_type, max_steps=max(len(actions), 1) + 1)
    obs, _ = env.reset(seed=int(reset_seed))
    seen, covs, success = [], [], False
    for a in np.asarray(actions):
        seen.append(obs)
        obs, _, terminated, _, info = env.step(np.asarray(a))
        covs.append(float(info["coverage"]))
        if terminated:
            success = True
            break
    if own:
        env.close()
    covs = np.asarray(covs)
    return {"obs": seen, "coverage": covs, "max_coverage": float(covs.max()) if len(covs) else 0.0,
            "success": success, "n_steps": len(covs)}


def evaluate_pusht(
    policy_fn: Callable,
    n_episodes: int,
    seed: int,
    max_steps: int = MAX_STEPS,
    *,
    reset_fn: Callable[[], None] | None = None,
    n_envs: int = 1,
    batched: bool = False,
    verbose: bool = False,
    video=None,
    video_size: int = 256,
) -> dict:
    """Roll out ``policy_fn(obs (5,)) -> action (2,)`` (state observations) for ``n_episodes``
    episodes; episode ``i`` starts from ``env.reset(seed=reset_seeds(seed, n, stream=1)[i])``. An
    episode succeeds when coverage > 0.95 (the env terminates there) within ``max_steps`` steps.
    ``reset_fn`` (or ``policy_fn.reset`` if it exists) is called before each episode.

    With ``batched=True``, ``policy_fn`` is a batch policy (:mod:`cleandiffuser.env.lockstep`:
    ``policy_fn(obs_list, slots) -> actions``, optional ``policy_fn.reset(slot)``) and
    ``min(n_envs, n_episodes)`` environments step in lockstep, the policy called once per step for all
    of them; a per-step ``policy_fn`` runs one environment (``n_envs=1``). Deterministic for a seed if
    the policy is, and then independent of ``n_envs``.

    Returns ``success_rate``, ``success_se`` (binomial standard error), ``mean_max_coverage``,
    ``max_coverage_se``, ``mean_max_reward`` / ``max_reward_se`` (reward = min(coverage / 0.95,
    1); the mean of its per-episode max is the score Diffusion Policy reports), ``mean_final_coverage``, ``mean_length``, ``n_episodes``,
    ``wall_time_s`` and ``episodes`` (per-episode ``reset_seed``, ``success``, ``max_coverage``,
    ``final_coverage``, ``length``). With ``video`` (a path without suffix), episode 0 is also rendered
    (``video_size`` square frames, :func:`render_replay`) and ``video`` gives the file written.
    """
    from .lockstep import as_batch_policy, run_lockstep

    n = int(n_episodes)
    policy_fn, n_envs = as_batch_policy(policy_fn, batched, n_envs, reset_fn)
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    seeds = reset_seeds(seed, n, stream=1)
    envs = [make_env("state", max_steps=max_steps) for _ in range(min(n_envs, max(n, 1)))]
    t0 = time.time()

    def done(i, ep):
        ep["reset_seed"] = seeds[i]
        if verbose:
            print(f"episode {i}: success={ep['success']} max_coverage={ep['max_coverage']:.3f} "
                  f"length={ep['length']}", file=sys.stderr, flush=True)

    record = video is not None and n > 0
    if record:
        _check_video_size(video_size)
    episodes = run_lockstep(envs, n, lambda env, i: _Episode(env, seeds[i], max_steps, record=record and i == 0),
                            policy_fn, on_done=done)
    for env in envs:
        env.close()
    video_path = None
    if record:  # episode 0 kept its arrays: replay its actions (deterministic) in a rendering env, drop the rest
        actions = episodes[0]["action"]
        episodes[0] = {k: v for k, v in episodes[0].items() if not isinstance(v, np.ndarray)}
        video_path = str(render_replay(seeds[0], actions, video, size=video_size, max_steps=max_steps))
    s = np.array([e["success"] for e in episodes], dtype=float)
    mc = np.array([e["max_coverage"] for e in episodes], dtype=float)
    mr = np.clip(mc / SUCCESS_THRESHOLD, 0.0, 1.0)  # the env's reward; its max is DP's Push-T score
    p = float(s.mean()) if n else 0.0
    return {
        "success_rate": p,
        "success_se": float(np.sqrt(p * (1 - p) / max(n, 1))),
        "mean_max_coverage": float(mc.mean()) if n else 0.0,
        "max_coverage_se": float(mc.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
        "mean_max_reward": float(mr.mean()) if n else 0.0,
        "max_reward_se": float(mr.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
        "mean_final_coverage": float(np.mean([e["final_coverage"] for e in episodes])) if n else 0.0,
        "mean_length": float(np.mean([e["length"] for e in episodes])) if n else 0.0,
        "n_episodes": n,
        "wall_time_s": time.time() - t0,
        "episodes": episodes,
        **({"video": video_path} if video is not None else {}),
    }


def _check_video_size(size) -> None:
    if int(size) < 96:  # gym-pusht draws its action marker int(size / 96) px thick: 0 fails in OpenCV
        raise ValueError(f"Push-T video frames must be at least 96 px, got video_size={size}")


def render_replay(reset_seed: int, actions, path_stem, size: int = 256, max_steps: int = MAX_STEPS) -> Path:
    """Render the episode that ``actions`` made from ``env.reset(seed=reset_seed)`` (Push-T replays bit for bit)
    as ``size`` x ``size`` frames, the start and one per step; written by
    :func:`cleandiffuser.env.video.write_video` at the env's 10 fps. Returns the path."""
    from .video import write_video

    _check_video_size(size)
    env = make_env("state", max_steps=max_steps, visualization_width=int(size), visualization_height=int(size))
    try:
        env.reset(seed=int(reset_seed))
        frames = [env.render()]
        for a in np.asarray(actions, dtype=np.float32):
            env.step(a)
            frames.append(env.render())
        fps = int(env.metadata.get("render_fps") or 10)
    finally:
        env.close()
    return write_video(np.stack(frames), path_stem, fps)
