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
* :func:`make_env` - rebuild the environment from a file's ``env_args``.
* :func:`replay_demo` - reset to a demo's first state and replay its actions.
* :func:`evaluate_policy_robosuite` - success rate (+- standard error) of any
  ``policy_fn(obs_dict) -> action (7,)``, or of a batch policy on ``n_envs`` envs stepping in lockstep
  (episode ``i`` reset from its own seed, :func:`reset_episode`).

Tasks (robomimic names in brackets): ``Lift`` [lift], ``PickPlaceCan`` [can],
``NutAssemblySquare`` [square].

Observations follow robomimic: ``object`` (robosuite's ``object-state``), ``robot0_eef_pos``,
``robot0_eef_quat``, ``robot0_gripper_qpos`` and the other proprioceptive keys listed in
:data:`LOW_DIM_KEYS`; with ``images=True`` also ``agentview_image`` and
``robot0_eye_in_hand_image`` (uint8 (84, 84, 3), upright as robomimic stores them; robosuite
renders them upside down). Images are rendered from the recorded simulator states of each
kept demo (as robomimic's ``dataset_states_to_obs.py`` does), so failed attempts cost no
rendering. Offscreen rendering needs EGL (robosuite picks ``MUJOCO_GL=egl`` on Linux); without a
GPU Mesa's software renderer does it at ~0.1 s per 84x84 frame and camera.

Each demo also stores its MJCF (``model_file``, as robomimic does: e.g. Lift's cube size is
re-drawn every episode); :func:`reset_to` / :func:`replay_demo` use it. Open-loop replay of the
actions follows the recorded states closely but not bit-exactly (the MJCF round trip changes
the last digits, contacts amplify that), like replay of robomimic's own files.

robosuite is imported lazily; installing it: ``pip install --no-deps robosuite==1.5.2`` plus
``numba opencv-python termcolor`` (robosuite 1.5.2's own requirement ``mink==0.0.5`` pins
``numpy<2`` but is only needed for the GR1 whole-body IK, which is not used here).

CLI::

    python -m cleandiffuser.datagen.robosuite_demos --task lift --n 50 --seed 0 --out lift.hdf5
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_KEYS",
    "LOW_DIM_KEYS",
    "TASKS",
    "ScriptedCan",
    "ScriptedLift",
    "ScriptedSquare",
    "episode_seed",
    "evaluate_policy_robosuite",
    "generate_demos",
    "make_env",
    "make_env_args",
    "render_images_from_states",
    "replay_demo",
    "reset_episode",
    "reset_to",
    "robomimic_obs",
    "run_scripted_episode",
    "scripted_policy",
    "task_spec",
]


@dataclass(frozen=True)
class TaskSpec:
    env_name: str  # robosuite environment name
    horizon: int  # max steps of a demo / an evaluation episode
    short: str  # robomimic's name


TASKS: dict[str, TaskSpec] = {
    "Lift": TaskSpec("Lift", 200, "lift"),
    "PickPlaceCan": TaskSpec("PickPlaceCan", 400, "can"),
    "NutAssemblySquare": TaskSpec("NutAssemblySquare", 400, "square"),
}
_ALIASES = {spec.short: name for name, spec in TASKS.items()} | {name.lower(): name for name in TASKS}

#: low-dim observation keys recorded (robomimic's names; ``object`` = robosuite's ``object-state``)
LOW_DIM_KEYS = (
    "object",
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_eef_quat_site",
    "robot0_gripper_qpos",
    "robot0_gripper_qvel",
    "robot0_joint_pos",
    "robot0_joint_pos_cos",
    "robot0_joint_pos_sin",
    "robot0_joint_vel",
)
CAMERA_NAMES = ("agentview", "robot0_eye_in_hand")
IMAGE_KEYS = tuple(f"{c}_image" for c in CAMERA_NAMES)

# OSC_POSE output scaling of robosuite's default Panda controller: action 1.0 = 5 cm / 0.5 rad
_POS_SCALE = 0.05
_ROT_SCALE = 0.5


def task_spec(task: str) -> TaskSpec:
    """``TaskSpec`` for a robosuite name (``Lift``) or robomimic short name (``lift``)."""
    name = task if task in TASKS else _ALIASES.get(str(task).lower())
    if name is None:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)} or {sorted(s.short for s in TASKS.values())}")
    return TASKS[name]


def _import_robosuite():
    try:
        import robosuite
    except ImportError as e:  # pragma: no cover - exercised only without robosuite
        raise ImportError(
            "robosuite is not installed: pip install --no-deps 'robosuite==1.5.2' && "
            "pip install numba opencv-python termcolor 'mujoco>=3.3,<3.4'"
        ) from e
    import logging

    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    return robosuite


# --------------------------------------------------------------------------- environments
def make_env_args(task: str, *, images: bool = False, camera_size: int = 84) -> dict:
    """robomimic ``env_args`` ({"env_name", "type": 1, "env_kwargs"}) for ``robosuite.make``."""
    spec = task_spec(task)
    rs = _import_robosuite()
    controller = rs.load_composite_controller_config(robot="Panda")
    env_kwargs = {
        "robots": ["Panda"],
        "controller_configs": controller,
        "has_renderer": False,
        "has_offscreen_renderer": bool(images),
        "use_camera_obs": bool(images),
        "use_object_obs": True,
        "ignore_done": True,
        "reward_shaping": False,
        "control_freq": 20,
        "lite_physics": True,
        "camera_names": list(CAMERA_NAMES),
        "camera_heights": int(camera_size),
        "camera_widths": int(camera_size),
        "camera_depths": False,
    }
    return {"env_name": spec.env_name, "type": 1, "env_kwargs": env_kwargs}


def make_env(env_args: Mapping[str, Any], *, seed: int | None = None, images: bool | None = None, **overrides):
    """Build the robosuite env described by ``env_args`` (as stored in a robomimic file).

    Args:
        seed: robosuite's env seed (object placements and robot init noise of every reset).
        images: force camera observations on/off (None: as ``env_args`` says).
        overrides: extra/replacement ``robosuite.make`` kwargs.
    """
    rs = _import_robosuite()
    if int(env_args.get("type", 1)) != 1:
        raise ValueError(f"env_args type {env_args.get('type')} is not a robosuite env (type 1)")
    kwargs = copy.deepcopy(dict(env_args["env_kwargs"]))
    if images is not None:
        kwargs["has_offscreen_renderer"] = bool(images)
        kwargs["use_camera_obs"] = bool(images)
    if not kwargs.get("use_camera_obs", False):
        kwargs["has_offscreen_renderer"] = False
    kwargs.update(overrides)
    if seed is not None:
        kwargs["seed"] = int(seed)
    return rs.make(env_args["env_name"], **kwargs)


def robomimic_obs(raw: Mapping[str, Any], keys: Sequence[str] | None = None) -> dict:
    """robosuite observation dict -> robomimic's view: ``object`` = ``object-state``; camera
    images flipped upright. ``keys=None`` keeps every low-dim key in :data:`LOW_DIM_KEYS` and
    every image the env produced."""
    if keys is None:
        keys = [k for k in LOW_DIM_KEYS if k in raw or (k == "object" and "object-state" in raw)]
        keys += [k for k in raw if k.endswith("_image")]
    out = {}
    for k in keys:
        src = "object-state" if k == "object" else k
        if src not in raw:
            raise KeyError(f"observation key {k!r} not produced by the env; it has {sorted(raw)}")
        v = np.asarray(raw[src])
        if k.endswith("_image"):
            v = _upright(v)
        elif v.dtype != np.float32 and v.dtype.kind == "f":
            v = v.astype(np.float64)
        out[k] = v
    return out


def _upright(img: np.ndarray) -> np.ndarray:
    """robosuite renders in OpenGL convention (bottom row first) unless its macro
    IMAGE_CONVENTION is "opencv"; robomimic stores upright images."""
    from robosuite import macros

    return np.ascontiguousarray(img[::-1] if macros.IMAGE_CONVENTION == "opengl" else img)


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


# --------------------------------------------------------------------------- rollouts
def _rebuild_sim(env, rebuild: Callable[[], Any]) -> Any:
    """Run ``rebuild`` (a hard reset: robosuite makes a new MjSim and, when rendering, a new offscreen
    render context) and free the old render context properly.

    Left to the garbage collector, the old context is freed late and wrongly: it sits in a reference cycle
    (~330 MB under software EGL; ten rendering envs ran out of 24 GB within one evaluation), and its
    ``__del__`` frees its MuJoCo GL objects while the *new* context is current, deleting the new one's
    framebuffer and textures (same ids): frames come out black or garbled. So the old one is freed here,
    with its own GL context current, before the rebuild; the collector then finds nothing left to free."""
    old = getattr(getattr(env, "sim", None), "_render_context_offscreen", None)
    if old is not None and getattr(old, "gl_ctx", None) is not None:
        old.gl_ctx.make_current()
        old.con.free()
        old.gl_ctx.free()
    out = rebuild()
    if old is not None:
        gc.collect()
        new = getattr(env.sim, "_render_context_offscreen", None)
        if new is not None:
            new.gl_ctx.make_current()
    return out


def reset_env(env) -> dict:
    """``env.reset()``; a hard reset frees the render context it replaces (:func:`_rebuild_sim`)."""
    if getattr(env, "hard_reset", True):
        return _rebuild_sim(env, env.reset)
    return env.reset()


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


def _reset_to_state(env, state: np.ndarray) -> None:
    """Set the simulator state and refresh the controllers' cached robot state (robosuite
    caches eef pose / jacobians and refreshes them lazily, so without this the first action
    after a state reset would be computed from the pre-reset pose)."""
    env.sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
    env.sim.forward()
    for robot in env.robots:
        for ctrl in robot.part_controllers.values():
            ctrl.update(force=True)


def reset_to(env, state: np.ndarray, model_file: str | None = None) -> dict:
    """Reset ``env`` to a recorded episode start: load the demo's MJCF (``model_file``: object
    sizes etc. are randomized per episode, so the model matters), zero the Panda gripper's
    internal command ramp (hidden state that every episode starts from 0), set the simulator
    state. Returns the observation (robosuite's raw dict). Replaying the demo's actions from
    here follows the recorded states up to small float differences (the MJCF round trip is not
    bit-exact), which contact dynamics can amplify."""
    if model_file is not None:
        _rebuild_sim(env, lambda: env.reset_from_xml_string(env.edit_model_xml(model_file)))
        env.sim.reset()
    for robot in env.robots:
        for g in getattr(robot, "gripper", {}).values():
            if hasattr(g, "current_action"):
                g.current_action = np.zeros_like(g.current_action)
    _reset_to_state(env, state)
    return env._get_observations(force_update=True)


def render_images_from_states(env, states: np.ndarray, camera_names: Sequence[str] = CAMERA_NAMES,
                              size: int = 84) -> dict:
    """Upright uint8 (T, size, size, 3) images per camera for each simulator state, rendered
    as robomimic's ``dataset_states_to_obs.py`` does (set the state, render). ``env`` must have
    an offscreen renderer and hold the demo's model."""
    frames: dict[str, list] = {f"{c}_image": [] for c in camera_names}
    for s in states:
        env.sim.set_state_from_flattened(np.asarray(s, dtype=np.float64))
        env.sim.forward()
        for c in camera_names:
            frames[f"{c}_image"].append(_upright(env.sim.render(camera_name=c, width=size, height=size)))
    return {k: np.stack(v).astype(np.uint8) for k, v in frames.items()}


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


def replay_demo(env_args: Mapping[str, Any], demo: Mapping[str, Any], *, env=None, use_states: bool = False) -> dict:
    """Reset to the start of a recorded demo (:func:`reset_to` with its ``states[0]`` and
    ``model_file``) and replay ``demo["actions"]`` open loop (or, with ``use_states``, also set
    every recorded state before its action). Returns ``{"success": at the last step,
    "success_any": at any step, "max_state_err": largest |replayed - recorded| state entry}``."""
    own = env is None
    if own:
        env = make_env(env_args, images=False)
        env.reset()
    states = np.asarray(demo["states"])
    reset_to(env, states[0], demo.get("model_file"))
    err, any_succ = 0.0, False
    for t, a in enumerate(np.asarray(demo["actions"])):
        if use_states and t > 0:
            _reset_to_state(env, states[t])
        err = max(err, float(np.abs(env.sim.get_state().flatten() - states[t]).max()))
        env.step(a)
        any_succ = any_succ or bool(env._check_success())
    out = {"success": bool(env._check_success()), "success_any": any_succ, "max_state_err": err}
    if own:
        env.close()
    return out


def episode_seed(seed: int, i: int) -> int:
    """Reset seed of evaluation episode ``i`` under ``seed`` (see :func:`evaluate_policy_robosuite`)."""
    return int(np.random.SeedSequence([int(seed), 1, int(i)]).generate_state(1)[0])


def reset_episode(env, seed: int) -> dict:
    """``env.reset()`` with the env's RNG re-seeded to ``seed`` first, so the episode's start (object
    model and placement, robot init noise: all drawn from ``env.rng``) depends on ``seed`` alone, not on
    the episodes the env ran before. The Generator is re-seeded in place because the placement sampler
    and the robots hold the same object. Returns the raw observation."""
    env.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
    return reset_env(env)


class _Episode:
    """One evaluation episode (``success`` = ``env._check_success()`` at any step, which ends it). With
    ``record``, its MJCF and simulator states (the start and one per step) are kept, for a video."""

    def __init__(self, env, seed: int, horizon: int, obs_keys: Sequence[str] | None, record: bool = False):
        self.env, self.horizon, self.obs_keys = env, int(horizon), obs_keys
        self.obs = robomimic_obs(reset_episode(env, seed), obs_keys)
        self.ret, self.success, self.t = 0.0, False, 0
        self.model_xml = env.sim.model.get_xml() if record else None
        self.states = [env.sim.get_state().flatten()] if record else None

    def step(self, action) -> bool:
        raw, r, _, _ = self.env.step(np.asarray(action, dtype=np.float64).reshape(-1))
        if self.states is not None:
            self.states.append(self.env.sim.get_state().flatten())
        self.t += 1
        self.ret += float(r)
        self.success = bool(self.env._check_success())
        done = self.success or self.t >= self.horizon
        if not done:  # the policy acts on it next
            self.obs = robomimic_obs(raw, self.obs_keys)
        return done

    def record(self) -> dict:
        return {"success": self.success, "length": self.t, "return": self.ret}


def evaluate_policy_robosuite(
    policy_fn: Callable,
    env_args: Mapping[str, Any],
    n_episodes: int,
    seed: int,
    *,
    horizon: int | None = None,
    obs_keys: Sequence[str] | None = None,
    images: bool | None = None,
    reset_fn: Callable[[], None] | None = None,
    env=None,
    n_envs: int = 1,
    batched: bool = False,
    verbose: bool = False,
    video=None,
    video_size: int = 256,
    video_camera: str = "agentview",
) -> dict:
    """Roll out ``policy_fn(obs) -> action (7,)`` for ``n_episodes`` episodes.

    ``obs`` is robomimic's view of the observation (:func:`robomimic_obs`) restricted to
    ``obs_keys`` (all recorded keys when None). An episode succeeds when ``env._check_success()``
    holds at any step (robomimic's rule; the episode stops there) within ``horizon`` steps
    (default: the task's). ``reset_fn`` (or ``policy_fn.reset`` if it exists) is called before
    each episode. Episode ``i`` starts from :func:`reset_episode` with ``episode_seed(seed, i)``
    (the env's RNG re-seeded per episode), so it does not depend on which env runs it or what that
    env ran before.

    With ``batched=True``, ``policy_fn`` is a batch policy (:mod:`cleandiffuser.datagen.lockstep`:
    ``policy_fn(obs_list, slots) -> actions``, optional ``policy_fn.reset(slot)``) and
    ``min(n_envs, n_episodes)`` env instances (built in this process) step in lockstep, the policy
    called once per step for all of them; a per-step ``policy_fn`` runs one env (``n_envs=1``).
    ``env``: an env to use instead of building one (``n_envs=1`` only). Deterministic for a seed if
    the policy is, and then independent of ``n_envs``.

    Returns ``success_rate``, ``success_se`` (binomial standard error), ``n_episodes``,
    ``mean_length``, ``wall_time_s`` and ``episodes`` (per-episode ``success``, ``length``,
    ``return``). With ``video`` (a path without suffix), episode 0's simulator states are rendered
    from ``video_camera`` (:func:`render_states_video`) and ``video`` gives the file written (None
    when offscreen rendering failed, with a warning).
    """
    from .lockstep import as_batch_policy, run_lockstep

    spec = task_spec(env_args["env_name"])
    horizon = spec.horizon if horizon is None else int(horizon)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    n = int(n_episodes)
    policy_fn, n_envs = as_batch_policy(policy_fn, batched, n_envs, reset_fn)
    if env is not None and n_envs != 1:
        raise ValueError("env= gives one environment; leave it out to run n_envs > 1")
    own = env is None
    envs = [make_env(env_args, seed=seed, images=images) for _ in range(min(n_envs, n))] if own else [env]
    t0 = time.time()

    def done(i, ep):
        if verbose:
            print(f"episode {i}: success={ep['success']} length={ep['length']}", file=sys.stderr, flush=True)

    recorded: list[_Episode] = []

    def start(e, i: int) -> _Episode:
        ep = _Episode(e, episode_seed(seed, i), horizon, obs_keys, record=video is not None and i == 0)
        if ep.states is not None:
            recorded.append(ep)
        return ep

    episodes = run_lockstep(envs, n, start, policy_fn, on_done=done)
    if own:
        for e in envs:
            e.close()
    video_path = None
    if recorded:
        ep = recorded[0]
        control_freq = int(dict(env_args.get("env_kwargs") or {}).get("control_freq", 20))
        video_path = render_states_video(env_args, np.asarray(ep.states), ep.model_xml, video, size=video_size,
                                         camera=video_camera, fps=control_freq)
    s = np.array([e["success"] for e in episodes], dtype=float)
    n = max(len(s), 1)
    p = float(s.mean()) if len(s) else 0.0
    return {
        "success_rate": p,
        "success_se": float(np.sqrt(p * (1 - p) / n)),
        "n_episodes": len(episodes),
        "mean_length": float(np.mean([e["length"] for e in episodes])) if episodes else 0.0,
        "wall_time_s": time.time() - t0,
        "episodes": episodes,
        **({"video": video_path} if video is not None else {}),
    }


def render_states_video(env_args: Mapping[str, Any], states: np.ndarray, model_xml: str, path_stem, *,
                        size: int = 256, camera: str = "agentview", fps: int = 20) -> str | None:
    """Render simulator ``states`` of one episode (its MJCF ``model_xml``) from ``camera`` as ``size`` x ``size``
    frames and write them (:func:`cleandiffuser.env.video.write_video`). Offscreen rendering runs in a
    subprocess per MuJoCo GL backend (:func:`cleandiffuser.env.video.render_in_subprocess`), so a missing GL
    library only costs the video. Returns the path, or None (with a warning) when no backend works."""
    from ..env.video import render_in_subprocess

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "episode.npz"
        np.savez(data, states=np.asarray(states, dtype=np.float64), model_xml=np.array(model_xml))
        job = {"env_args": dict(env_args), "data": str(data),  # env_args are JSON, as robomimic files store them
               "stem": str(path_stem), "size": int(size), "camera": str(camera), "fps": int(fps)}
        info, _ = render_in_subprocess("cleandiffuser.datagen.robosuite_demos:_render_states_worker", job)
    return None if info is None else info["path"]


def _render_states_worker() -> None:  # pragma: no cover - runs in a subprocess (render_states_video)
    from ..env.video import write_video

    job = json.loads(sys.argv[-1])
    with np.load(job["data"]) as f:
        states, model_xml = f["states"], str(f["model_xml"])
    env = make_env(job["env_args"], images=True)  # an offscreen renderer
    try:
        reset_to(env, states[0], model_xml)
        frames = render_images_from_states(env, states, [job["camera"]], job["size"])[f"{job['camera']}_image"]
    finally:
        env.close()
    path = write_video(frames, job["stem"], job["fps"])
    print(json.dumps({"path": str(path), "frames": len(frames)}))
    sys.stdout.flush()


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
