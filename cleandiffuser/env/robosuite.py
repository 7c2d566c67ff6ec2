"""robosuite 1.5 manipulation tasks as robomimic sees them: environments rebuilt from a file's ``env_args``,
observations in robomimic's keys, resets to recorded states, replay, policy evaluation and rollout videos.

* :func:`make_env_args` / :func:`make_env` - robomimic ``env_args`` for a task (Panda arm, robosuite 1.5's default
  composite controller = OSC_POSE arm with 7-dim delta actions ``[dpos(3), drot axis-angle(3), gripper(1)]``), and
  the env they describe.
* :func:`robomimic_obs` - robosuite's observation dict in robomimic's keys (``object`` = ``object-state``, images
  upright).
* :func:`reset_to` / :func:`replay_demo` - reset to a demo's first state (with its MJCF) and replay its actions.
* :func:`render_images_from_states` - camera images of recorded simulator states.
* :func:`evaluate_policy_robosuite` - success rate (+- standard error) of any ``policy_fn(obs_dict) -> action (7,)``,
  or of a batch policy on ``n_envs`` envs stepping in lockstep (episode ``i`` reset from its own seed,
  :func:`reset_episode`), with an optional video of episode 0 (:func:`render_states_video`).

Tasks (robomimic names in brackets): ``Lift`` [lift], ``PickPlaceCan`` [can], ``NutAssemblySquare`` [square].
Scripted demonstrators for them, and robomimic-format datasets, are in :mod:`cleandiffuser.datagen.robosuite_demos`.

Observations follow robomimic: ``object`` (robosuite's ``object-state``), ``robot0_eef_pos``,
``robot0_eef_quat``, ``robot0_gripper_qpos`` and the other proprioceptive keys listed in
:data:`LOW_DIM_KEYS`; with ``images=True`` also ``agentview_image`` and
``robot0_eye_in_hand_image`` (uint8 (84, 84, 3), upright as robomimic stores them; robosuite
renders them upside down). Offscreen rendering needs EGL (robosuite picks ``MUJOCO_GL=egl`` on Linux); without a
GPU Mesa's software renderer takes 40-60 ms per 84x84 camera image, ~95% of a two-camera step
(results/bench_render.md).

Each demo stores its MJCF (``model_file``, as robomimic does: e.g. Lift's cube size is
re-drawn every episode); :func:`reset_to` / :func:`replay_demo` use it. Open-loop replay of the
actions follows the recorded states closely but not bit-exactly (the MJCF round trip changes
the last digits, contacts amplify that), like replay of robomimic's own files.

robosuite is imported lazily; installing it: ``pip install --no-deps robosuite==1.5.2`` plus
``numba opencv-python termcolor`` (robosuite 1.5.2's own requirement ``mink==0.0.5`` pins
``numpy<2`` but is only needed for the GR1 whole-body IK, which is not used here).
"""
from __future__ import annotations

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
    "CAMERA_NAMES",
    "IMAGE_KEYS",
    "LOW_DIM_KEYS",
    "TASKS",
    "TaskSpec",
    "episode_seed",
    "evaluate_policy_robosuite",
    "make_env",
    "make_env_args",
    "render_images_from_states",
    "render_states_video",
    "replay_demo",
    "reset_env",
    "reset_episode",
    "reset_to",
    "robomimic_obs",
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



# --------------------------------------------------------------------------- resets and replay
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

    With ``batched=True``, ``policy_fn`` is a batch policy (:mod:`cleandiffuser.env.lockstep`:
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
    from .video import render_in_subprocess

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "episode.npz"
        np.savez(data, states=np.asarray(states, dtype=np.float64), model_xml=np.array(model_xml))
        job = {"env_args": dict(env_args), "data": str(data),  # env_args are JSON, as robomimic files store them
               "stem": str(path_stem), "size": int(size), "camera": str(camera), "fps": int(fps)}
        info, _ = render_in_subprocess("cleandiffuser.env.robosuite:_render_states_worker", job)
    return None if info is None else info["path"]


def _render_states_worker() -> None:  # pragma: no cover - runs in a subprocess (render_states_video)
    from .video import write_video

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
