"""Action representations: absolute end-effector actions and the rotation-6d transform.

Diffusion Policy trains its robomimic tasks on *absolute* OSC_POSE actions (the controller's target pose
instead of a step relative to the current one) and learns the orientation as the continuous 6-d rotation
representation: axis-angle jumps between ``v`` and ``-v`` near an angle of pi, which is exactly where a
top-down gripper lives, while 6-d (two rows of the rotation matrix) is continuous.

* :func:`absolute_actions` / :func:`delta_to_absolute_actions` - an episode's OSC_POSE delta actions
  ``[dpos(3), drot axis-angle(3), gripper(1)]`` -> the absolute targets ``[pos(3), axis-angle(3),
  gripper(1)]`` that robosuite's controller derived from them (in the controller's frame, the robot base
  for robosuite's default ``input_ref_frame: base``), read from the controller itself after replaying the
  recorded simulator states (robomimic's / Diffusion Policy's method).
* :func:`to_absolute_file` - the same for a whole robomimic file, with ``env_args`` switched to the
  absolute controller (:func:`absolute_env_args`)::

      python -m cleandiffuser.imitation.actions to-absolute lift.hdf5 lift_abs.hdf5

* :class:`ActionTransform` - ``task.rotation_rep``: ``axis_angle`` (identity) or ``rotation_6d``, which
  maps ``[pos, axis-angle, gripper]`` (7 per arm) to ``[pos, rot6d, gripper]`` (10 per arm) before
  normalization and back after the policy's unnormalization, so the environment always gets 7-d actions.
* :func:`check_abs_action` - ``task.abs_action`` against the controller that ``env_args`` describe.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..runner.config import ConfigError
from ..utils.rotation import ROTATION_DIMS, convert_rotation

__all__ = [
    "ROTATION_REPS",
    "ActionTransform",
    "absolute_actions",
    "absolute_env_args",
    "check_abs_action",
    "controller_input_type",
    "delta_to_absolute_actions",
    "main",
    "to_absolute_file",
]

#: values of task.rotation_rep
ROTATION_REPS = ("axis_angle", "rotation_6d")
_ARM = 7  # [pos(3), axis-angle(3), gripper(1)] per arm
_OSC = "OSC_POSE"


# --------------------------------------------------------------------------- rotation-6d transform
class ActionTransform:
    """Environment actions <-> the actions the model learns (numpy or torch, any leading shape).

    ``rotation_rep="axis_angle"``: the identity (any action width). ``"rotation_6d"``: the actions are
    blocks of ``[pos(3), axis-angle(3), gripper(1)]``, one per arm (7 or 14 dims: robomimic's one- and
    two-robot tasks); each block becomes ``[pos(3), rot6d(6), gripper(1)]`` (10 or 20 dims), rot6d as
    :mod:`cleandiffuser.utils.rotation` defines it (the first two rows of the rotation matrix, as
    Diffusion Policy's RotationTransformer). :meth:`inverse` decodes any 6-vector by Gram-Schmidt, so the
    policy's raw outputs always give valid rotations.
    """

    def __init__(self, rotation_rep: str = "axis_angle", action_dim: int = 7, key: str = "task.rotation_rep"):
        if rotation_rep not in ROTATION_REPS:
            raise ValueError(f"{key}={rotation_rep!r} is not one of {ROTATION_REPS}")
        self.rotation_rep = rotation_rep
        self.env_dim = int(action_dim)
        if self.identity:
            self.model_dim = self.env_dim
            return
        if self.env_dim < _ARM or self.env_dim % _ARM:
            raise ValueError(f"{key}={rotation_rep} needs actions made of [pos(3), axis-angle(3), gripper(1)] "
                             f"blocks, one per arm (7 or 14 dims); these actions have {self.env_dim} dims "
                             f"(use {key}=axis_angle)")
        self.n_arms = self.env_dim // _ARM
        self.model_dim = self.n_arms * (_ARM - 3 + ROTATION_DIMS["rotation_6d"])

    @property
    def identity(self) -> bool:
        return self.rotation_rep == "axis_angle"

    def _convert(self, x, width: int, src: str, dst: str, what: str):
        if x.shape[-1] != width:
            raise ValueError(f"{what} must have {width} dims in the last axis for rotation_rep={self.rotation_rep} "
                             f"and {self.env_dim}-d environment actions; got shape {tuple(x.shape)}")
        k = ROTATION_DIMS[src]
        blocks = x.reshape(*x.shape[:-1], self.n_arms, width // self.n_arms)
        rot = convert_rotation(blocks[..., 3:3 + k], src, dst)
        parts = [blocks[..., :3], rot, blocks[..., 3 + k:]]
        out = torch.cat(parts, dim=-1) if isinstance(x, torch.Tensor) else np.concatenate(parts, axis=-1)
        return out.reshape(*x.shape[:-1], -1)

    def forward(self, actions):
        """(..., env_dim) environment actions -> (..., model_dim)."""
        if self.identity:
            return actions
        return self._convert(actions, self.env_dim, "axis_angle", "rotation_6d", "environment actions")

    __call__ = forward

    def inverse(self, x):
        """(..., model_dim) -> (..., env_dim) environment actions."""
        if self.identity:
            return x
        return self._convert(x, self.model_dim, "rotation_6d", "axis_angle", "model actions")

    def __repr__(self) -> str:
        return f"ActionTransform({self.rotation_rep!r}, {self.env_dim} -> {self.model_dim})"


# --------------------------------------------------------------------------- controller configs
def _osc_configs(node) -> list[dict]:
    """Every OSC_POSE part-controller config inside robosuite controller_configs (composite configs as
    load_composite_controller_config gives them, their raw JSON form with body_parts.arms, lists)."""
    found = []
    if isinstance(node, Mapping):
        if node.get("type") == _OSC:
            found.append(node)
        for v in node.values():
            found += _osc_configs(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            found += _osc_configs(v)
    return found


def _input_type(cfg: Mapping) -> str:
    if "input_type" in cfg:
        return str(cfg["input_type"])
    # robosuite <= 1.4 configs said control_delta; robosuite 1.5's default is delta
    return "absolute" if cfg.get("control_delta") is False else "delta"


def controller_input_type(env_args: Mapping | None) -> str | None:
    """"delta" or "absolute": the input type of the OSC_POSE arm controllers of robomimic ``env_args``
    (None when they describe no OSC_POSE controller, e.g. no env_args or another controller)."""
    if not env_args:
        return None
    kinds = {_input_type(c) for c in _osc_configs((env_args.get("env_kwargs") or {}).get("controller_configs"))}
    if len(kinds) > 1:
        raise ValueError(f"env_args mix OSC_POSE controllers with input types {sorted(kinds)}")
    return kinds.pop() if kinds else None


def absolute_env_args(env_args: Mapping) -> dict:
    """A copy of robomimic ``env_args`` whose OSC_POSE arm controllers take absolute input
    (robosuite 1.5: ``input_type: "absolute"``)."""
    out = copy.deepcopy(dict(env_args))
    configs = _osc_configs((out.get("env_kwargs") or {}).get("controller_configs"))
    if not configs:
        raise ValueError("env_args have no OSC_POSE arm controller (env_kwargs.controller_configs); only OSC_POSE "
                         "delta actions can be converted to absolute ones")
    for cfg in configs:
        cfg["input_type"] = "absolute"
        if "control_delta" in cfg:
            cfg["control_delta"] = False
    return out


def check_abs_action(abs_action: bool, env_args: Mapping | None) -> None:
    """ConfigError when ``task.abs_action`` disagrees with the controller of the rollout env_args
    (nothing to check when they name no OSC_POSE controller)."""
    kind = controller_input_type(env_args)
    if abs_action and kind == "delta":
        raise ConfigError("task.abs_action=true but the dataset's env_args use a delta OSC_POSE controller (its "
                          "actions are deltas); convert the file first: python -m cleandiffuser.imitation.actions "
                          "to-absolute IN.hdf5 OUT.hdf5 and train on OUT.hdf5, or set task.abs_action=false")
    if not abs_action and kind == "absolute":
        raise ConfigError("task.abs_action=false but the dataset's env_args use an absolute OSC_POSE controller "
                          "(input_type: absolute): set task.abs_action=true")


# --------------------------------------------------------------------------- delta -> absolute
def _arm_controllers(env):
    """[(offset of the robot's actions, arm name, (start, end) in the robot's actions, controller)]."""
    out, offset = [], 0
    for robot in env.robots:
        cc = robot.composite_controller
        for part, (s, e) in cc._action_split_indexes.items():
            if part not in robot.arms:
                continue  # grippers (and bases, torsos) keep their command
            ctrl = cc.part_controllers[part]
            if getattr(ctrl, "name", None) != _OSC or ctrl.impedance_mode != "fixed":
                raise ValueError(f"arm {part!r} uses controller {getattr(ctrl, 'name', type(ctrl).__name__)} "
                                 f"(impedance {getattr(ctrl, 'impedance_mode', '?')}); only OSC_POSE with fixed "
                                 "impedance can be converted")
            if ctrl.input_type != "delta":
                raise ValueError(f"arm {part!r}: the env's controller already takes {ctrl.input_type!r} input; build "
                                 "the env from the delta env_args")
            out.append((offset, part, (s, e), ctrl))
        offset += robot.action_dim
    return out


def absolute_actions(env, states, actions, model_file: str | None = None) -> np.ndarray:
    """One episode's OSC_POSE delta actions -> absolute ``[pos, axis-angle, gripper]`` actions.

    ``env`` is a robosuite env with the delta controller (:func:`cleandiffuser.env.robosuite.make_env`
    of the file's env_args, reset once); ``states`` (T, S) are the recorded simulator states, ``model_file``
    the demo's MJCF. For every step the env is set to ``states[t]`` and the arm controller is given
    ``actions[t]`` exactly as ``env.step`` would (scaled by output_max / input_max, clipped, the position
    added to and the rotation applied to the current end-effector pose); its goal (``goal_pos``,
    ``goal_ori``) is the absolute action. Gripper dims are copied.
    """
    from ..env import robosuite as rd

    states = np.asarray(states, dtype=np.float64)
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or len(states) != len(actions):
        raise ValueError(f"need (T, A) actions and (T, S) states of the same length; got {actions.shape} and "
                         f"{states.shape}")
    rd.reset_to(env, states[0], model_file)
    arms = _arm_controllers(env)  # after reset_to: loading the demo's model builds new controllers
    if actions.shape[1] != sum(r.action_dim for r in env.robots):
        raise ValueError(f"the actions have {actions.shape[1]} dims but the env's robots take "
                         f"{sum(r.action_dim for r in env.robots)}")
    out = actions.copy()
    for t, a in enumerate(actions):
        rd._reset_to_state(env, states[t])  # also refreshes the controllers' cached eef pose
        for robot in env.robots:
            robot.composite_controller.update_state()  # the base frame the goals are expressed in
        for offset, _, (s, e), ctrl in arms:
            ctrl.set_goal(a[offset + s:offset + e])
            out[t, offset + s:offset + e] = np.concatenate(
                [ctrl.goal_pos, convert_rotation(np.asarray(ctrl.goal_ori, dtype=np.float64), "matrix", "axis_angle")])
    return out


def _replay_env(env_args: Mapping):
    from ..env import robosuite as rd

    if int(env_args.get("type", 1)) != 1:
        raise ValueError(f"env_args type {env_args.get('type')} is not a robosuite env (type 1)")
    if controller_input_type(env_args) != "delta":
        raise ValueError("the env_args' arm controller is not an OSC_POSE controller with delta input "
                         f"(found {controller_input_type(env_args)!r}); nothing to convert")
    env = rd.make_env(env_args, images=False)
    env.reset()
    return env


def delta_to_absolute_actions(env_args: Mapping, episodes: Sequence[Mapping], log=None) -> list[np.ndarray]:
    """Absolute actions of every episode (dicts with ``states``, ``actions`` and optionally ``model_file``,
    as :func:`cleandiffuser.dataset.read_robomimic_hdf5` gives them), replayed in one env built from
    ``env_args`` (which must describe the delta controller the actions were recorded with)."""
    env = _replay_env(env_args)
    try:
        out = []
        for i, ep in enumerate(episodes):
            if "states" not in ep:
                raise ValueError(f"episode {i} has no 'states': the conversion replays the recorded simulator states")
            out.append(absolute_actions(env, ep["states"], ep["actions"], ep.get("model_file")))
            if log is not None:
                log(f"episode {i + 1}/{len(episodes)}")
    finally:
        env.close()
    return out


def to_absolute_file(src, dst, log=print) -> dict:
    """Write a copy of the robomimic file ``src`` to ``dst`` whose ``actions`` are absolute (see
    :func:`absolute_actions`) and whose ``env_args`` use the absolute controller; everything else
    (observations, states, masks, model files, attributes) is copied unchanged. Returns
    ``{"path", "episodes", "steps", "seconds"}``."""
    import h5py

    from ..dataset.robomimic_format import _decode, robomimic_demo_names
    from ..serialization import atomic_path

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found")
    if dst.exists() and os.path.samefile(src, dst):
        raise ValueError(f"the output {dst} is the input file; write the absolute actions to a new file")
    with h5py.File(src, "r") as f:
        if "data" not in f or "env_args" not in f["data"].attrs:
            raise ValueError(f"{src} has no data.attrs['env_args']: the conversion needs the robosuite env the demos "
                             "were recorded in")
        raw = _decode(f["data"].attrs["env_args"])
        env_args = json.loads(raw) if isinstance(raw, str) else dict(raw)
        names = robomimic_demo_names(k for k, v in f["data"].items() if isinstance(v, h5py.Group))
    new_args = absolute_env_args(env_args)
    log(f"to-absolute: replaying every one of the {len(names)} episodes of {src} in robosuite "
        f"({env_args.get('env_name')}) to read the OSC controller's goal pose for each action; this takes a while")
    t0 = time.time()
    env = _replay_env(env_args)
    steps = 0
    try:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
            with h5py.File(tmp, "r+") as f:
                data = f["data"]
                for i, name in enumerate(names):
                    g = data[name]
                    if "states" not in g:
                        raise ValueError(f"{src}: data/{name} has no 'states' to replay")
                    model = _decode(g.attrs["model_file"]) if "model_file" in g.attrs else None
                    acts = absolute_actions(env, g["states"][()], g["actions"][()], model)
                    g["actions"][...] = acts  # same shape: written in place, dtype and layout kept
                    steps += len(acts)
                    if (i + 1) % max(1, len(names) // 20) == 0 or i + 1 == len(names):
                        el = time.time() - t0
                        log(f"  {i + 1}/{len(names)} episodes, {steps:,} steps, {el:.0f} s "
                            f"(about {el / (i + 1) * (len(names) - i - 1):.0f} s left)")
                data.attrs["env_args"] = json.dumps(new_args)
    finally:
        env.close()
    secs = time.time() - t0
    log(f"wrote {dst}: absolute actions [pos(3), axis-angle(3), gripper(1)] per arm, env_args with input_type "
        f"absolute; train on it with task.abs_action=true (and task.rotation_rep=rotation_6d)")
    return {"path": str(dst), "episodes": len(names), "steps": steps, "seconds": round(secs, 1)}


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cleandiffuser.imitation.actions",
                                 description="Action representations for the imitation pipeline.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-absolute", help="write a copy of a robomimic file (OSC_POSE delta actions) with absolute "
                                           "actions and an absolute controller in env_args (replays every episode)")
    p.add_argument("src", help="robomimic .hdf5 with delta actions, states and env_args")
    p.add_argument("dst", help="output .hdf5")
    args = ap.parse_args(argv)
    try:
        to_absolute_file(args.src, args.dst)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
