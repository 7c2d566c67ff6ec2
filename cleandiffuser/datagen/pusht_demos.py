"""Scripted Push-T demonstrations (``gym-pusht``) -> Diffusion Policy zarr replay buffers.

The task, its environment, replay and evaluation are :mod:`cleandiffuser.env.pusht`. This module provides


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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..env.pusht import GOAL_POSE, MAX_STEPS, make_env, replay_actions, reset_seeds, rotation_2d, run_episode

__all__ = ["PusherParams", "ScriptedPusher", "generate_pusht_demos"]

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


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _t_polygon(pos: np.ndarray, theta: float):
    import shapely

    return shapely.Polygon(_T_OUTLINE @ rotation_2d(theta).T + pos)


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
        self.goal_cog = self.goal[:2] + rotation_2d(self.goal[2]) @ _COG_LOCAL
        self.reset()

    def reset(self) -> None:
        self.contact: int | None = None
        self.phase = "approach"
        self.path: list[np.ndarray] = []

    # -- model
    def _scores(self, pos, theta):
        R = rotation_2d(theta)
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


# ---------------------------------------------------------------------------- demos
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
