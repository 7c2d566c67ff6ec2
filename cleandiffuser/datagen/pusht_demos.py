"""Scripted Push-T demonstrations (``gym-pusht``) -> Diffusion Policy zarr replay buffers.

Push-T (Diffusion Policy's 2-D pushing task, ``gym_pusht/PushT-v0`` from the ``gym-pusht``
package): a circular agent (radius 15) pushes a T-shaped block into a fixed goal pose.

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

* :class:`ScriptedPusher` - a feedback pusher working from the 5-d state alone: each step it
  scores contact points on the T's outline by how well a push there (frictionless, quasi-static
  model: the block moves along the inward normal and turns by ``(r x n) / I``) moves the block's
  (centre of mass, L * angle) towards the goal, keeps pushing the chosen contact while it stays
  good (hysteresis), and otherwise walks to the new contact along a shortest path around the
  block inflated by the agent's radius (visibility graph), approaching from outside so the block
  is not pushed the wrong way. Per-demo randomness: angle weight, push depths, switching
  threshold, approach clearance, action noise.
* :func:`generate_pusht_demos` - run the pusher until ``n_demos`` successful episodes and write
  them with :func:`cleandiffuser.dataset.zarr_format.write_zarr_replay` using Diffusion
  Policy's Push-T keys: ``state (T, 5)``, ``action (T, 2)``, ``keypoint (T, 9, 2)`` (the block
  keypoints computed the way DP's ``PymunkKeypointManager`` does), ``n_contacts (T, 1)`` and,
  with ``images=True``, ``img (T, 96, 96, 3)`` (float32 in [0, 255], as in DP's file). Row
  ``t`` holds the observation *before* action ``t``.
* :func:`evaluate_pusht` - success rate and max coverage (+- standard errors) of any
  ``policy_fn(obs (5,)) -> action (2,)``, or of a batch policy on ``n_envs`` envs stepping in lockstep.
* :func:`replay_actions` - reset with a seed and replay actions (reproduces a demo exactly).

Install: ``pip install 'gym-pusht>=0.1.8,<0.2'`` (tested 0.1.8; pulls pymunk<7, pygame, shapely, opencv-python;
it pins nothing that conflicts with numpy 2 / gymnasium 1.x). Rendering needs no display.

CLI::

    python -m cleandiffuser.datagen.pusht_demos --n 100 --seed 0 --out pusht_scripted.zarr
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ENV_ID",
    "GOAL_POSE",
    "MAX_STEPS",
    "SUCCESS_THRESHOLD",
    "PusherParams",
    "ScriptedPusher",
    "block_keypoints",
    "evaluate_pusht",
    "generate_pusht_demos",
    "make_env",
    "replay_actions",
    "reset_seeds",
    "run_episode",
]

ENV_ID = "gym_pusht/PushT-v0"
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
SUCCESS_THRESHOLD = 0.95  # coverage, as in the env (strictly greater)
MAX_STEPS = 300

# ---------------------------------------------------------------------------- T geometry
# Body frame of gym-pusht's tee (scale 30): bar x in [-60, 60], y in [0, 30]; stem x in
# [-15, 15], y in [30, 120]. The body origin is the observation's block position; the centre of
# gravity is set to (0, 45) and the moment of inertia is 3000 (mass 1).
_COG_LOCAL = np.array([0.0, 45.0])
_INERTIA = 3000.0
_AGENT_R = 15.0
_T_OUTLINE = np.array(
    [(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], dtype=float
)
# pushable faces: (fixed coordinate axis, value, range along the face, outward normal)
_FACES = [
    ("y", 0.0, (-57.0, 57.0), (0.0, -1.0)),  # top of the bar
    ("x", 60.0, (3.0, 27.0), (1.0, 0.0)),  # right end of the bar
    ("y", 30.0, (36.0, 57.0), (0.0, 1.0)),  # underside of the right arm
    ("x", 15.0, (50.0, 117.0), (1.0, 0.0)),  # right side of the stem
    ("y", 120.0, (-12.0, 12.0), (0.0, 1.0)),  # bottom of the stem
    ("x", -15.0, (50.0, 117.0), (-1.0, 0.0)),  # left side of the stem
    ("y", 30.0, (-57.0, -36.0), (0.0, 1.0)),  # underside of the left arm
    ("x", -60.0, (3.0, 27.0), (-1.0, 0.0)),  # left end of the bar
]


def _contact_candidates(spacing: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    pts, outs = [], []
    for axis, val, (lo, hi), out in _FACES:
        n = max(2, round((hi - lo) / spacing) + 1)
        for s in np.linspace(lo, hi, n):
            pts.append((s, val) if axis == "y" else (val, s))
            outs.append(out)
    return np.asarray(pts, float), np.asarray(outs, float)


_CAND_P, _CAND_OUT = _contact_candidates()


def _rot(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _t_polygon(pos: np.ndarray, theta: float):
    import shapely

    return shapely.Polygon(_T_OUTLINE @ _rot(theta).T + pos)


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
        local = (xy[mask] - pos) @ _rot(ang)  # inverse of the affine map local -> world
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

    ``stream`` 0 is used by :func:`generate_pusht_demos`, 1 by :func:`evaluate_pusht`, so
    evaluating with the demos' seed does not replay the demos' initial states.
    """
    return [int(np.random.SeedSequence([int(seed), int(stream), i]).generate_state(1)[0])
            for i in range(int(offset), int(offset) + int(n))]


# ---------------------------------------------------------------------------- scripted pusher
@dataclass
class PusherParams:
    angle_scale: float = 60.0  # px per rad: weight of the angle error against the CoM error
    max_depth: float = 25.0  # px: largest commanded push past the contact per step
    depth_gain: float = 1.0  # commanded depth = gain * ideal contact displacement (clipped)
    min_depth: float = 1.0
    switch_ratio: float = 0.7  # switch contacts when the current one scores below ratio * best
    near_ratio: float = 0.85  # among contacts scoring >= near_ratio * best, take the nearest one
    clearance: float = 6.0  # px added to the agent radius when planning around the block
    approach_tol: float = 5.0
    waypoint_tol: float = 8.0
    max_lead: float = 60.0  # px: while walking, the target is at most this far ahead of the agent
    noise: float = 0.0  # std (px) of Gaussian noise added to the commanded target

    @classmethod
    def sample(cls, rng: np.random.Generator, noise_scale: float = 1.0) -> PusherParams:
        return cls(
            angle_scale=float(rng.uniform(45.0, 80.0)),
            max_depth=float(rng.uniform(15.0, 30.0)),
            depth_gain=float(rng.uniform(0.8, 1.3)),
            switch_ratio=float(rng.uniform(0.6, 0.8)),
            near_ratio=float(rng.uniform(0.8, 0.92)),
            clearance=float(rng.uniform(4.0, 9.0)),
            max_lead=float(rng.uniform(40.0, 90.0)),
            noise=float(noise_scale * rng.uniform(0.0, 1.5)),
        )


class ScriptedPusher:
    """Feedback pusher: ``pusher(obs (5,)) -> action (2,)``; call :meth:`reset` per episode."""

    def __init__(self, params: PusherParams | None = None, rng: np.random.Generator | int | None = None,
                 goal: Sequence[float] = GOAL_POSE):
        self.p = params or PusherParams()
        self.rng = np.random.default_rng(rng)
        self.goal = np.asarray(goal, dtype=float)
        self.goal_cog = self.goal[:2] + _rot(self.goal[2]) @ _COG_LOCAL
        self.reset()

    def reset(self) -> None:
        self.contact: int | None = None
        self.phase = "approach"
        self.path: list[np.ndarray] = []

    # -- model
    def _scores(self, pos, theta):
        R = _rot(theta)
        cog = pos + R @ _COG_LOCAL
        c = _CAND_P @ R.T + pos
        out = _CAND_OUT @ R.T
        n = -out
        k = _cross(c - cog, n) / _INERTIA  # rad per px of CoM motion along n
        L = self.p.angle_scale
        e = np.array([*(self.goal_cog - cog), L * _wrap(self.goal[2] - theta)])
        D = np.concatenate([n, (L * k)[:, None]], axis=1)
        dn = np.linalg.norm(D, axis=1)
        score = D @ e / dn
        s_opt = D @ e / dn**2  # CoM displacement along n minimising the remaining error
        contact_disp = s_opt * (1.0 + k * _cross(c - cog, n))  # displacement of the contact point along n
        return score, contact_disp, c, out

    # -- planning around the block
    def _plan(self, start: np.ndarray, goal_pt: np.ndarray, pos, theta) -> list[np.ndarray]:
        import shapely

        body = _t_polygon(pos, theta)
        r = _AGENT_R + self.p.clearance
        obst = body.buffer(_AGENT_R + 2.0, join_style="mitre", mitre_limit=3.0)  # touching the block
        nodes_poly = body.buffer(r + 3.0, join_style="mitre", mitre_limit=3.0)
        path: list[np.ndarray] = []
        if shapely.contains_xy(obst, *start):
            ext = nodes_poly.exterior
            q = ext.interpolate(ext.project(shapely.Point(start)))
            start = np.clip(np.array([q.x, q.y]), 0.0, 512.0)
            path.append(start)
        if not shapely.intersects(obst, shapely.LineString([start, goal_pt])):
            return path + [goal_pt]
        P = np.asarray([start] + list(nodes_poly.exterior.coords)[:-1] + [goal_pt], dtype=float)
        P[1:-1] = np.clip(P[1:-1], 0.0, 512.0)  # the agent cannot leave [0, 512]^2
        m = len(P)
        ii, jj = np.triu_indices(m, 1)
        segs = shapely.linestrings(np.stack([P[ii], P[jj]], axis=1))
        ok = ~shapely.intersects(obst, segs)
        W = np.full((m, m), np.inf)
        d = np.linalg.norm(P[ii] - P[jj], axis=1)
        W[ii[ok], jj[ok]] = d[ok]
        W[jj[ok], ii[ok]] = d[ok]
        # Dijkstra from 0 to m-1
        dist = np.full(m, np.inf)
        prev = np.full(m, -1)
        dist[0] = 0.0
        done = np.zeros(m, bool)
        for _ in range(m):
            u = int(np.argmin(np.where(done, np.inf, dist)))
            if not np.isfinite(dist[u]) or u == m - 1:
                break
            done[u] = True
            alt = dist[u] + W[u]
            better = alt < dist
            dist[better] = alt[better]
            prev[better] = u
        if not np.isfinite(dist[m - 1]):  # boxed in (block against a wall): go straight
            return path + [goal_pt]
        seq = []
        u = m - 1
        while u > 0:
            seq.append(P[u])
            u = prev[u]
        return path + seq[::-1]

    # -- policy
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=float).reshape(-1)
        agent, pos, theta = obs[:2], obs[2:4], float(obs[4])
        p = self.p
        score, cdisp, c, out = self._scores(pos, theta)
        ready_all = c + out * (_AGENT_R + p.clearance + 4.0)  # pre-push positions, clear of the block
        score = np.where(np.all((ready_all > 1.0) & (ready_all < 511.0), axis=1), score, -np.inf)
        best = int(np.argmax(score))
        cur = self.contact
        switch = cur is None or score[cur] <= 0 or score[cur] < p.switch_ratio * score[best]
        if switch:
            good = np.flatnonzero(score >= p.near_ratio * score[best])
            new = int(good[np.argmin(np.linalg.norm(ready_all[good] - agent, axis=1))])
            if new != cur:
                self.contact = new
                self.phase = "approach"
                self.path = []
        j = self.contact
        ready = ready_all[j]
        if self.phase == "approach":
            if not self.path:
                self.path = self._plan(agent, ready, pos, theta)
            self.path[-1] = ready
            while len(self.path) > 1 and np.linalg.norm(self.path[0] - agent) < p.waypoint_tol:
                self.path.pop(0)
            if len(self.path) == 1 and np.linalg.norm(ready - agent) < p.approach_tol:
                self.phase = "push"
            else:
                step = self.path[0] - agent
                dist = float(np.linalg.norm(step))
                target = agent + step * min(1.0, p.max_lead / max(dist, 1e-9))
        if self.phase == "push":
            # leave the push if the agent is no longer in front of the contact (block turned away)
            t = np.array([-out[j][1], out[j][0]])
            lateral = abs(float((agent - c[j]) @ t))
            if lateral > 12.0:
                self.phase, self.path = "approach", []
                target = ready
            else:
                depth = float(np.clip(p.depth_gain * cdisp[j], p.min_depth, p.max_depth))
                target = c[j] + out[j] * (_AGENT_R - depth)
        if p.noise > 0:
            target = target + self.rng.normal(0.0, p.noise, size=2)
        return np.clip(target, 0.0, 512.0)


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


def _render_images(actions: np.ndarray, reset_seed: int, state: np.ndarray, env) -> np.ndarray:
    """96x96 frames (float32 in [0, 255], DP's ``img``) before each action, by replaying the
    episode in a ``pixels_agent_pos`` env; checks that the replay follows the recorded agent."""
    rep = replay_actions(actions, reset_seed, env=env)
    agent = np.asarray([o["agent_pos"] for o in rep["obs"]], dtype=np.float32)
    if len(agent) != len(state) or not np.allclose(agent, state[:, :2], atol=1e-3):
        raise RuntimeError("image replay diverged from the recorded episode")
    return np.asarray([o["pixels"] for o in rep["obs"]], dtype=np.float32)


def generate_pusht_demos(
    n_demos: int,
    seed: int,
    out_path: str | os.PathLike | None,
    max_attempts: int | None = None,
    max_steps: int = MAX_STEPS,
    *,
    images: bool = False,
    noise: float = 1.0,
    verbose: bool = False,
) -> dict:
    """Roll out :class:`ScriptedPusher` (fresh random parameters per attempt) until ``n_demos``
    episodes succeed (coverage > 0.95 within ``max_steps``) or ``max_attempts`` (default
    ``2 * n_demos + 10``) attempts were made; write the successes to ``out_path`` (a Diffusion
    Policy zarr replay buffer; skipped when None) with keys ``state``, ``action``, ``keypoint``,
    ``n_contacts`` and, with ``images``, ``img``.

    Attempt ``i`` resets the env with ``reset_seeds(seed, ...)[i]``; the report lists each kept
    demo's ``reset_seed`` so :func:`replay_actions` can reproduce it. ``noise`` scales the
    Gaussian action noise (0 = none). Raises RuntimeError when no attempt succeeds.

    Report: ``n_demos``, ``attempts``, ``success_rate`` (kept / attempts), ``mean_length``,
    ``n_steps``, ``mean_max_coverage`` (all attempts), ``time_per_attempt_s``,
    ``time_per_demo_s``, ``wall_time_s``, ``demos`` (``attempt``, ``reset_seed``, ``length``,
    ``final_coverage``), ``out_path``, ``keys``.
    """
    n_demos = int(n_demos)
    if n_demos < 1:
        raise ValueError("n_demos must be >= 1")
    max_attempts = 2 * n_demos + 10 if max_attempts is None else int(max_attempts)
    env = make_env("state", max_steps=max_steps)
    t0 = time.time()
    kept, demos, max_covs = [], [], []
    attempt = 0
    while len(kept) < n_demos and attempt < max_attempts:
        rseed = reset_seeds(seed, 1, offset=attempt)[0]
        rng = np.random.default_rng([int(seed), attempt])
        pusher = ScriptedPusher(PusherParams.sample(rng, noise_scale=noise), rng=rng)
        ep = run_episode(env, pusher, rseed, max_steps=max_steps, record=True)
        max_covs.append(ep["max_coverage"])
        if verbose:
            print(f"attempt {attempt}: success={ep['success']} length={ep['length']} "
                  f"max_coverage={ep['max_coverage']:.3f} kept={len(kept) + ep['success']}/{n_demos}",
                  file=sys.stderr, flush=True)
        if ep["success"]:
            kept.append({k: ep[k] for k in ("state", "action", "keypoint", "n_contacts")})
            demos.append({"attempt": attempt, "reset_seed": rseed, "length": ep["length"],
                          "final_coverage": ep["final_coverage"]})
        attempt += 1
    env.close()
    t_roll = time.time() - t0
    if not kept:
        raise RuntimeError(f"no successful Push-T demo in {attempt} attempts")
    if images:
        penv = make_env("pixels_agent_pos", max_steps=max_steps + 1)
        for ep, d in zip(kept, demos):
            ep["img"] = _render_images(ep["action"], d["reset_seed"], ep["state"], penv)
        penv.close()
    if out_path is not None:
        from cleandiffuser.dataset.zarr_format import write_zarr_replay

        write_zarr_replay(out_path, kept)
    wall = time.time() - t0
    lengths = [d["length"] for d in demos]
    return {
        "n_demos": len(kept),
        "attempts": attempt,
        "success_rate": len(kept) / attempt,
        "mean_length": float(np.mean(lengths)),
        "n_steps": int(np.sum(lengths)),
        "mean_max_coverage": float(np.mean(max_covs)),
        "time_per_attempt_s": t_roll / attempt,
        "time_per_demo_s": wall / len(kept),
        "wall_time_s": wall,
        "demos": demos,
        "out_path": None if out_path is None else str(out_path),
        "keys": sorted(kept[0]),
    }


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

    With ``batched=True``, ``policy_fn`` is a batch policy (:mod:`cleandiffuser.datagen.lockstep`:
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
    from ..env.video import write_video

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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cleandiffuser.datagen.pusht_demos",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="successful demos to keep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output zarr directory (e.g. pusht_scripted.zarr)")
    ap.add_argument("--images", action="store_true", help="also store 96x96 'img' frames")
    ap.add_argument("--max-attempts", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=MAX_STEPS)
    ap.add_argument("--noise", type=float, default=1.0, help="scale of the action noise")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    rep = generate_pusht_demos(args.n, args.seed, args.out, max_attempts=args.max_attempts,
                               max_steps=args.max_steps, images=args.images, noise=args.noise,
                               verbose=args.verbose)
    print(json.dumps({k: v for k, v in rep.items() if k != "demos"}, indent=1))
    side = Path(str(args.out).rstrip("/") + ".json")
    side.write_text(json.dumps(rep, indent=1))
    print(f"report (with each demo's reset seed): {side}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
