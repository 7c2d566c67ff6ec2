"""Scripted demonstrators for robosuite 1.5 manipulation tasks -> robomimic-format HDF5.

We cannot download robomimic's datasets, so this module makes comparable ones: a scripted
policy per task (Panda arm, robosuite 1.5's default composite controller = OSC_POSE arm with
7-dim delta actions ``[dpos(3), drot axis-angle(3), gripper(1)]``) drives a waypoint state
machine with a P-controller on the end-effector pose. Every demo draws its own randomness
(waypoint/grasp offsets, heights, speeds, action noise, and discrete choices such as the grasp
yaw among the cube's symmetric faces, or which of the peg's four sides the square nut's handle
ends up on), so the data is varied and, where the task allows, multimodal. Only successful
episodes are kept.

* :func:`generate_demos` - roll out the scripted policy until ``n_demos`` successes; writes a
  robomimic HDF5 (``data/demo_i/{obs,next_obs,actions,states,rewards,dones}``, ``env_args``)
  through :func:`cleandiffuser.dataset.robomimic_format.write_robomimic_hdf5`.
* :func:`scripted_policy` / :func:`run_scripted_episode` - the demonstrator of a task, and one episode of it.

The environments (``env_args``, observations, resets, replay, evaluation) are :mod:`cleandiffuser.env.robosuite`.
Images are rendered from the recorded simulator states of each kept demo (as robomimic's
``dataset_states_to_obs.py`` does), so failed attempts cost no rendering.

CLI::

    python -m cleandiffuser.datagen.robosuite_demos --task lift --n 50 --seed 0 --out lift.hdf5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..env.robosuite import (
    make_env,
    make_env_args,
    render_images_from_states,
    reset_env,
    robomimic_obs,
    task_spec,
)

__all__ = [
    "ScriptedCan",
    "ScriptedLift",
    "ScriptedSquare",
    "generate_demos",
    "run_scripted_episode",
    "scripted_policy",
]

# OSC_POSE output scaling of robosuite's default Panda controller: action 1.0 = 5 cm / 0.5 rad
_POS_SCALE = 0.05
_ROT_SCALE = 0.5


# --------------------------------------------------------------------------- rotation helpers
def _rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def _rotz(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _quat_yaw(q_xyzw: np.ndarray) -> float:
    from scipy.spatial.transform import Rotation

    R = Rotation.from_quat(np.asarray(q_xyzw, dtype=float)).as_matrix()
    return float(np.arctan2(R[1, 0], R[0, 0]))


def _wrap(a: float, period: float = 2 * np.pi) -> float:
    """Wrap to [-period/2, period/2)."""
    return float((a + period / 2) % period - period / 2)


# Gripper pointing down; the grip site's x axis (along which the fingers close) along world +y.
_R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def _target_R(yaw: float) -> np.ndarray:
    """Top-down gripper rotated by ``yaw`` about world z (fingers close along (-sin, cos, 0))."""
    return _rotz(yaw) @ _R_DOWN


def _eef_yaw(R: np.ndarray) -> float:
    """Yaw of a (roughly) top-down grip-site rotation, inverse of :func:`_target_R`."""
    Rz = R @ _R_DOWN.T
    return float(np.arctan2(Rz[1, 0], Rz[0, 0]))


# --------------------------------------------------------------------------- scripted policies
class _Scripted:
    """Waypoint state machine + P-controller on the grip-site pose -> OSC delta actions.

    The phases ``approach`` (above the grasp point, gripper open, wrist turned to the grasp
    yaw), ``descend``, ``grasp`` (close and hold until the fingers stop) and ``lift`` are shared;
    subclasses add the task's later phases in ``_task_phase`` and say where to grasp
    (``_grasp_point``) and whether the object came up (``_lifted``; if not, the policy goes back
    to ``approach`` and tries again - such recoveries stay in the demos). Per-demo randomness
    (drawn in ``reset``): gains, speed limits, temporally correlated action noise, waypoint
    offsets and discrete choices.
    """

    phases: tuple[str, ...] = ("approach", "descend", "grasp", "lift")
    max_regrasps = 2

    def __init__(self, rng: np.random.Generator | int | None = None, noise: float = 1.0):
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.noise = float(noise)

    # ---- per episode
    def reset(self, env, obs: Mapping[str, Any]) -> None:
        r = self.rng
        self.env = env
        self.site_id = env.robots[0].eef_site_id["right"]
        self.table_z = float(env.table_offset[2]) if hasattr(env, "table_offset") else float(env.bin1_pos[2])
        self.kp_pos = r.uniform(0.7, 1.1)  # fraction of the position error commanded per step
        self.kp_rot = r.uniform(0.6, 1.0)
        self.vmax = r.uniform(0.55, 1.0)  # max |action| on the position dims
        self.rot_max = r.uniform(0.5, 0.9)
        self.act_sigma = self.noise * r.uniform(0.02, 0.08)
        self.noise_rho = r.uniform(0.6, 0.9)  # temporally correlated action noise (AR(1))
        self._eps = np.zeros(6)
        self.phase = 0
        self.t_phase = 0
        self.t = 0
        self.regrasps = 0
        self.mem: dict[str, Any] = {}
        self.approach_h = r.uniform(0.05, 0.12)
        self.n_close = int(r.integers(6, 11))
        self.vmax_phase = {"descend": min(self.vmax, r.uniform(0.3, 0.6)), "lift": r.uniform(0.5, 1.0)}
        self._sample_params(env, obs)

    def _sample_params(self, env, obs) -> None:
        raise NotImplementedError

    def _grasp_point(self, obs) -> np.ndarray:
        raise NotImplementedError

    def _lift_target(self, obs, hold: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _lifted(self, obs) -> bool:
        raise NotImplementedError

    def _task_phase(self, name: str, obs, eef_pos, eef_R):
        raise NotImplementedError

    def _on_lifted(self, obs) -> None:
        """Hook: the object is up (choose placement parameters...)."""

    # ---- control
    def eef_pose(self):
        d = self.env.sim.data
        return np.array(d.site_xpos[self.site_id]), np.array(d.site_xmat[self.site_id]).reshape(3, 3)

    def servo(self, eef_pos, eef_R, tgt_pos, tgt_yaw, grip, *, vmax=None) -> np.ndarray:
        vmax = self.vmax if vmax is None else vmax
        a_pos = self.kp_pos * (np.asarray(tgt_pos) - eef_pos) / _POS_SCALE
        m = np.abs(a_pos).max()
        if m > vmax:
            a_pos *= vmax / m
        a_rot = self.kp_rot * _rotvec(_target_R(tgt_yaw) @ eef_R.T) / _ROT_SCALE
        m = np.abs(a_rot).max()
        if m > self.rot_max:
            a_rot *= self.rot_max / m
        self._eps = self.noise_rho * self._eps + np.sqrt(1 - self.noise_rho**2) * self.rng.normal(0, self.act_sigma, 6)
        a = np.concatenate([a_pos, a_rot, [grip]])
        a[:6] += self._eps
        return np.clip(a, -1.0, 1.0)

    def _goto(self, phase: str) -> None:
        self.phase = self.phases.index(phase)
        self.t_phase = 0

    def _phase_target(self, name, obs, eef_pos, eef_R):
        if name in ("approach", "descend"):
            grasp = self._grasp_point(obs)
            if name == "approach":
                tgt = grasp + [0, 0, self.approach_h]
                done = self.reached(eef_pos, tgt, 0.01, 0.03, eef_R, self.yaw, tol_yaw=0.1) or self.t_phase > 70
                return tgt, self.yaw, -1.0, done
            done = self.reached(eef_pos, grasp, 0.008, 0.007) or self.t_phase > 40
            return grasp, self.yaw, -1.0, done
        if name == "grasp":
            if self.t_phase == 0:
                self.mem["hold"] = eef_pos.copy()
            still = np.abs(np.asarray(obs["robot0_gripper_qvel"])).max() < 0.02
            done = (self.t_phase >= self.n_close and still) or self.t_phase >= 25
            return self.mem["hold"], self.yaw, 1.0, done
        if name == "lift":
            tgt = self._lift_target(obs, self.mem["hold"])
            up = eef_pos[2] > tgt[2] - 0.03
            if up or self.t_phase > 40:
                if not self._lifted(obs) and self.regrasps < self.max_regrasps:
                    self.regrasps += 1
                    self.approach_h = self.rng.uniform(0.05, 0.1)
                    return tgt, self.yaw, -1.0, False  # re-grasp: handled in __call__
                self._on_lifted(obs)
                return tgt, self.yaw, 1.0, True
            return tgt, self.yaw, 1.0, False
        return self._task_phase(name, obs, eef_pos, eef_R)

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        eef_pos, eef_R = self.eef_pose()
        for _ in range(len(self.phases) + 1):
            name = self.phases[min(self.phase, len(self.phases) - 1)]
            n_re = self.regrasps
            tgt_pos, tgt_yaw, grip, done = self._phase_target(name, obs, eef_pos, eef_R)
            if self.regrasps != n_re:  # missed the object: open and start over from above it
                self._goto("approach")
                break
            if done and self.phase < len(self.phases) - 1:
                self.phase += 1
                self.t_phase = 0
                continue
            break
        self.t += 1
        self.t_phase += 1
        return self.servo(eef_pos, eef_R, tgt_pos, tgt_yaw, grip, vmax=self.vmax_phase.get(name))

    @property
    def phase_name(self) -> str:
        return self.phases[min(self.phase, len(self.phases) - 1)]

    # ---- helpers
    def reached(self, eef_pos, tgt_pos, tol_xy: float, tol_z: float, eef_R=None, tgt_yaw=None, tol_yaw=0.12) -> bool:
        d = np.asarray(tgt_pos) - eef_pos
        ok = np.linalg.norm(d[:2]) < tol_xy and abs(d[2]) < tol_z
        if ok and eef_R is not None and tgt_yaw is not None:
            ok = np.linalg.norm(_rotvec(_target_R(tgt_yaw) @ eef_R.T)) < tol_yaw
        return bool(ok)

    def choose_yaw(self, candidates: Sequence[float], current: float, limit: float = np.deg2rad(100),
                   weights: Sequence[float] | None = None) -> float:
        """Pick one of the (symmetric) grasp yaws: a random one among those within ``limit`` of
        the wrist's current yaw (closer ones more likely), else the closest."""
        c = np.array([current + _wrap(y - current) for y in candidates])
        w0 = np.ones(len(c)) if weights is None else np.asarray(weights, dtype=float)
        dist = np.abs(c - current)
        ok = (dist < limit) & (w0 > 0)
        if not ok.any():
            return float(c[np.argmin(dist)])
        w = w0[ok] * np.exp(-dist[ok] / 0.6)
        return float(self.rng.choice(c[ok], p=w / w.sum()))


class ScriptedLift(_Scripted):
    """Lift: above cube -> descend -> close -> lift. Grasp yaw: one of the cube's two face
    pairs (random when both are reachable); grasp offsets/heights, lift height and lift
    direction random."""

    def _sample_params(self, env, obs):
        r = self.rng
        cube_yaw = _quat_yaw(obs["cube_quat"])
        _, eef_R = self.eef_pose()
        self.yaw = self.choose_yaw([cube_yaw + k * np.pi / 2 for k in range(4)], _eef_yaw(eef_R))
        self.grasp_off = r.uniform(-0.006, 0.006, 2)
        self.grasp_dz = r.uniform(-0.008, 0.006)
        self.lift_h = r.uniform(0.12, 0.22)
        self.lift_xy = r.uniform(-0.05, 0.05, 2)

    def _grasp_point(self, obs):
        return np.asarray(obs["cube_pos"]) + np.array([*self.grasp_off, self.grasp_dz])

    def _lift_target(self, obs, hold):
        return np.array([hold[0] + self.lift_xy[0], hold[1] + self.lift_xy[1], hold[2] + self.lift_h])

    def _lifted(self, obs):
        return bool(obs["cube_pos"][2] > self.table_z + 0.05)

    def _phase_target(self, name, obs, eef_pos, eef_R):
        if name == "lift":  # the last phase: keep lifting (the episode ends on success)
            tgt = self._lift_target(obs, self.mem["hold"])
            if self.t_phase > 40 and not self._lifted(obs) and self.regrasps < self.max_regrasps:
                self.regrasps += 1
            return tgt, self.yaw, 1.0, False
        return super()._phase_target(name, obs, eef_pos, eef_R)


class ScriptedCan(_Scripted):
    """PickPlaceCan: above can -> descend -> close -> lift -> carry above a random point of the
    target bin quadrant -> lower -> open -> retreat up. Grasp yaw random (the can is round)."""

    phases = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")

    def _sample_params(self, env, obs):
        r = self.rng
        _, eef_R = self.eef_pose()
        self.yaw = _eef_yaw(eef_R) + r.uniform(-np.pi / 3, np.pi / 3)
        self.grasp_off = r.uniform(-0.006, 0.006, 2)
        self.grasp_dz = r.uniform(-0.012, 0.008)
        self.carry_z = r.uniform(1.02, 1.12)
        # the can's success quadrant of bin 2 is [x0, x0 + bx/2] x [y0, y0 + by/2]; its far part is
        # at the edge of the Panda's reach, so aim at the near part (random point)
        x0, y0 = env.bin2_pos[0], env.bin2_pos[1]
        bx, by = env.bin_size[0] / 2, env.bin_size[1] / 2
        self.place_xy = np.array([x0 + r.uniform(0.2, 0.5) * bx, y0 + r.uniform(0.2, 0.5) * by])
        self.place_z = r.uniform(0.90, 0.96)  # grip-site height when releasing
        self.carry_yaw = self.yaw + r.uniform(-0.4, 0.4)
        self.n_open = int(r.integers(4, 9))
        self.vmax_phase.update({"lower": r.uniform(0.3, 0.7), "carry": r.uniform(0.75, 1.0)})

    def _grasp_point(self, obs):
        return np.asarray(obs["Can_pos"]) + np.array([*self.grasp_off, self.grasp_dz])

    def _lift_target(self, obs, hold):
        return np.array([hold[0], hold[1], self.carry_z])

    def _lifted(self, obs):
        return bool(obs["Can_pos"][2] > self.table_z + 0.12)

    def _task_phase(self, name, obs, eef_pos, eef_R):
        if name == "carry":
            tgt = np.array([*self.place_xy, self.carry_z])
            return tgt, self.carry_yaw, 1.0, self.reached(eef_pos, tgt, 0.02, 0.04) or self.t_phase > 150
        if name == "lower":
            tgt = np.array([*self.place_xy, self.place_z])
            return tgt, self.carry_yaw, 1.0, self.reached(eef_pos, tgt, 0.02, 0.015) or self.t_phase > 40
        if name == "release":
            if self.t_phase == 0:
                self.mem["hold"] = eef_pos.copy()
            return self.mem["hold"], self.carry_yaw, -1.0, self.t_phase >= self.n_open
        return self.mem["hold"] + [0, 0, 0.15], self.carry_yaw, -1.0, False


class ScriptedSquare(_Scripted):
    """NutAssemblySquare: above the nut's handle -> descend -> close -> lift -> carry the nut's
    centre (closed loop on its measured pose) above the square peg while turning it to one of
    the peg-aligned orientations with the handle towards the robot or to either side (random:
    multimodal) -> align -> lower onto the peg -> open -> retreat up."""

    phases = ("approach", "descend", "grasp", "lift", "carry", "align", "lower", "release", "retreat")

    def _sample_params(self, env, obs):
        r = self.rng
        m = env.sim.model
        self.nut_body = m.body_name2id(env.nuts[env.nut_id].root_body)
        self.handle_site = m.site_name2id(env.nuts[env.nut_id].important_sites["handle"])
        self.peg_body = env.peg1_body_id if env.nut_id == 0 else env.peg2_body_id
        self.peg_top = float(env.sim.data.body_xpos[self.peg_body][2] + m.geom_size[m.body_geomadr[self.peg_body]][2])
        nut_yaw = _quat_yaw(obs["SquareNut_quat"])
        _, eef_R = self.eef_pose()
        # fingers close across the handle (along the nut's local y): eef yaw = nut yaw (mod pi)
        self.yaw = self.choose_yaw([nut_yaw, nut_yaw + np.pi], _eef_yaw(eef_R), limit=np.deg2rad(95))
        self.grasp_along = r.uniform(-0.004, 0.008)  # along the handle (+ = outwards)
        self.grasp_across = r.uniform(-0.003, 0.003)
        self.grasp_dz = r.uniform(-0.006, 0.002)
        self.carry_clear = r.uniform(0.03, 0.07)  # nut centre above the peg top while carrying
        self.align_clear = r.uniform(0.02, 0.03)
        self.place_off = r.uniform(-0.002, 0.002, 2)
        self.release_h = r.uniform(0.05, 0.07)  # nut centre above the table when opening
        self.n_open = int(r.integers(4, 8))
        self.vmax_phase.update({"descend": min(self.vmax, r.uniform(0.25, 0.5)), "align": r.uniform(0.2, 0.4),
                                "lower": r.uniform(0.2, 0.4), "carry": r.uniform(0.6, 1.0)})

    def _nut(self):
        d = self.env.sim.data
        R = np.array(d.body_xmat[self.nut_body]).reshape(3, 3)
        return np.array(d.body_xpos[self.nut_body]), float(np.arctan2(R[1, 0], R[0, 0])), np.array(d.site_xpos[self.handle_site])

    def _grasp_point(self, obs):
        _, nut_yaw, handle = self._nut()
        out = np.array([np.cos(nut_yaw), np.sin(nut_yaw), 0.0])  # handle direction
        side = np.array([-out[1], out[0], 0.0])
        return handle + self.grasp_along * out + self.grasp_across * side + [0, 0, self.grasp_dz]

    def _lift_target(self, obs, hold):
        return np.array([hold[0], hold[1], self.peg_top + self.carry_clear + (hold[2] - self._nut()[0][2])])

    def _lifted(self, obs):
        return bool(self._nut()[0][2] > self.table_z + 0.05)

    def _on_lifted(self, obs):
        # turn the nut to a peg-aligned yaw (multiple of 90 deg) with the handle towards the robot
        # (yaw pi) or sideways (+-pi/2): pointing away would put the gripper out of reach
        _, nut_yaw, _ = self._nut()
        finals = [np.pi, np.pi / 2, -np.pi / 2]
        cands = [self.yaw + _wrap(f - nut_yaw) for f in finals]
        self.mem["yaw_place"] = self.choose_yaw(cands, self.yaw, limit=np.deg2rad(120), weights=[2.0, 1.0, 1.0])

    def _task_phase(self, name, obs, eef_pos, eef_R):
        nut_pos, _, _ = self._nut()
        peg = np.array(self.env.sim.data.body_xpos[self.peg_body])
        yaw = self.mem["yaw_place"]
        dxy = peg[:2] + self.place_off - nut_pos[:2]
        def nut_to(z):  # eef target that moves the nut centre to (peg xy, z)
            return np.array([*(eef_pos[:2] + dxy), eef_pos[2] + (z - nut_pos[2])])
        if name == "carry":
            tgt = nut_to(self.peg_top + self.carry_clear)
            return tgt, yaw, 1.0, np.linalg.norm(dxy) < 0.015 or self.t_phase > 120
        if name == "align":
            tgt = nut_to(self.peg_top + self.align_clear)
            yaw_ok = np.linalg.norm(_rotvec(_target_R(yaw) @ eef_R.T)) < 0.08
            done = (np.linalg.norm(dxy) < 0.004 and yaw_ok and self.t_phase > 3) or self.t_phase > 60
            return tgt, yaw, 1.0, done
        if name == "lower":
            z_rel = self.table_z + self.release_h
            tgt = nut_to(z_rel)
            if self.t_phase == 0:
                self.mem["z_hist"] = []
            self.mem["z_hist"].append(nut_pos[2])
            stuck = len(self.mem["z_hist"]) > 15 and self.mem["z_hist"][-15] - nut_pos[2] < 0.003
            if stuck and nut_pos[2] > self.peg_top - 0.01 and self.mem.get("realign", 0) < 2:
                self.mem["realign"] = self.mem.get("realign", 0) + 1  # caught on the peg top: back up
                self._goto("align")
                return tgt, yaw, 1.0, False
            done = nut_pos[2] < z_rel + 0.006 or self.t_phase > 70
            return tgt, yaw, 1.0, done
        if name == "release":
            if self.t_phase == 0:
                self.mem["hold"] = eef_pos.copy()
            return self.mem["hold"], yaw, -1.0, self.t_phase >= self.n_open
        return self.mem["hold"] + [0, 0, 0.12], yaw, -1.0, False


_POLICIES = {"Lift": ScriptedLift, "PickPlaceCan": ScriptedCan, "NutAssemblySquare": ScriptedSquare}


def scripted_policy(task: str, rng=None, noise: float = 1.0) -> _Scripted:
    """The scripted demonstrator of ``task`` (call ``.reset(env, obs)`` at each episode start)."""
    return _POLICIES[task_spec(task).env_name](rng, noise=noise)



# --------------------------------------------------------------------------- demos
def run_scripted_episode(env, policy: _Scripted, horizon: int, *, success_steps: int = 5,
                         obs_keys: Sequence[str] | None = None) -> tuple[dict, bool]:
    """Reset ``env`` and roll out ``policy`` until it has been successful for ``success_steps``
    consecutive steps (then stop) or ``horizon`` steps. Returns (demo dict, success)."""
    raw = reset_env(env)
    policy.reset(env, raw)
    keys = list(obs_keys) if obs_keys is not None else None
    obs_l, next_l, acts, states, rews = [], [], [], [], []
    cur = robomimic_obs(raw, keys)
    n_succ = 0
    for _ in range(horizon):
        states.append(np.array(env.sim.get_state().flatten()))
        a = policy(raw)
        raw, r, _, _ = env.step(a)
        nxt = robomimic_obs(raw, keys)
        obs_l.append(cur)
        next_l.append(nxt)
        acts.append(a)
        rews.append(float(r))
        cur = nxt
        n_succ = n_succ + 1 if env._check_success() else 0
        if n_succ >= success_steps:
            break
    T = len(acts)
    dones = np.zeros(T, dtype=np.int64)
    dones[-1] = 1
    demo = {
        "obs": {k: np.stack([o[k] for o in obs_l]) for k in obs_l[0]},
        "next_obs": {k: np.stack([o[k] for o in next_l]) for k in next_l[0]},
        "actions": np.asarray(acts, dtype=np.float64),
        "states": np.asarray(states, dtype=np.float64),
        "rewards": np.asarray(rews, dtype=np.float64),
        "dones": dones,
        "final_state": np.array(env.sim.get_state().flatten()),  # after the last action (not written)
    }
    return demo, n_succ >= success_steps



def generate_demos(
    task: str,
    n_demos: int,
    seed: int,
    out_path,
    images: bool = False,
    max_attempts: int | None = None,
    *,
    noise: float = 1.0,
    success_steps: int | None = None,
    next_obs: bool = True,
    store_model_file: bool = True,
    verbose: bool = False,
) -> dict:
    """Roll out the scripted demonstrator of ``task`` until ``n_demos`` successful episodes (or
    ``max_attempts`` episodes, default ``3 * n_demos + 10``) and write them as a robomimic HDF5.

    Deterministic for a seed (env placements and policy randomness both derive from it).
    Returns a report: ``task``, ``n_demos`` (kept), ``attempts``, ``success_rate`` (of the
    scripted policy over the attempts), ``success_se``, ``mean_length``, ``wall_time_s``,
    ``seconds_per_attempt``, ``seconds_per_demo``, ``path`` and ``env_args``. Raises
    RuntimeError when no attempt succeeded (nothing is written).
    """
    from ..dataset.robomimic_format import write_robomimic_hdf5

    spec = task_spec(task)
    if max_attempts is None:
        max_attempts = 3 * int(n_demos) + 10
    env_args = make_env_args(spec.env_name, images=images)
    t0 = time.time()
    # with images: an offscreen renderer but no camera observables (they would render every
    # step); kept demos are rendered from their states before the next reset changes the model
    env = make_env(env_args, seed=seed, images=False, **({"has_offscreen_renderer": True} if images else {}))
    policy = scripted_policy(spec.env_name, np.random.default_rng([int(seed), 1]), noise=noise)
    rng = np.random.default_rng([int(seed), 2])
    demos, lengths, attempts = [], [], 0
    while len(demos) < n_demos and attempts < max_attempts:
        attempts += 1
        k = int(rng.integers(3, 9)) if success_steps is None else int(success_steps)
        demo, ok = run_scripted_episode(env, policy, spec.horizon, success_steps=k)
        if verbose:
            print(f"[{spec.short}] attempt {attempts}: {'success' if ok else 'fail'} "
                  f"({len(demo['actions'])} steps, phase {policy.phase_name})", file=sys.stderr, flush=True)
        if not ok:
            continue
        if store_model_file:
            demo["model_file"] = env.sim.model.get_xml()
        if images:
            # T + 1 frames: obs[t] = frame t, next_obs[t] = frame t + 1 (state after the last action)
            size = int(env_args["env_kwargs"]["camera_heights"])
            ims = render_images_from_states(env, np.vstack([demo["states"], demo["final_state"][None]]), size=size)
            demo["obs"].update({k: v[:-1] for k, v in ims.items()})
            demo["next_obs"].update({k: v[1:] for k, v in ims.items()})
        demo.pop("final_state")
        if not next_obs:
            demo.pop("next_obs")
        demos.append(demo)
        lengths.append(len(demo["actions"]))
    env.close()
    t_rollout = time.time() - t0
    if not demos:
        raise RuntimeError(f"scripted {spec.env_name}: no successful episode in {attempts} attempts")
    write_robomimic_hdf5(out_path, demos, env_args)
    wall = time.time() - t0
    p = len(demos) / attempts
    return {
        "task": spec.env_name,
        "n_demos": len(demos),
        "attempts": attempts,
        "success_rate": p,
        "success_se": float(np.sqrt(p * (1 - p) / attempts)),
        "mean_length": float(np.mean(lengths)),
        "wall_time_s": wall,
        "rollout_time_s": t_rollout,
        "seconds_per_attempt": t_rollout / attempts,
        "seconds_per_demo": wall / len(demos),
        "images": bool(images),
        "seed": int(seed),
        "path": str(out_path),
        "env_args": env_args,
    }



# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cleandiffuser.datagen.robosuite_demos", description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True, help="lift | can | square (or Lift, PickPlaceCan, NutAssemblySquare)")
    ap.add_argument("--n", type=int, default=10, help="successful demos to keep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output HDF5 path")
    ap.add_argument("--images", action="store_true", help="also store agentview + eye-in-hand 84x84 images")
    ap.add_argument("--max-attempts", type=int, default=None)
    ap.add_argument("--noise", type=float, default=1.0, help="scale of the action noise")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    rep = generate_demos(args.task, args.n, args.seed, args.out, images=args.images,
                         max_attempts=args.max_attempts, noise=args.noise, verbose=args.verbose)
    rep = {k: v for k, v in rep.items() if k != "env_args"}
    print(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
