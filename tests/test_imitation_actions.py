"""Action representations: the rotation-6d transform, task.abs_action / task.rotation_rep checks, a tiny
rotation_6d training run whose policy outputs 7-d env actions, and (with robosuite) the OSC_POSE
delta -> absolute conversion checked by replaying both in robosuite."""
import json

import h5py
import numpy as np
import pytest
import torch

from cleandiffuser.dataset import write_robomimic_hdf5
from cleandiffuser.dataset.chunking import LinearNormalizer
from cleandiffuser.imitation import ChunkPolicy, get_policy, load_imitation_config, load_imitation_data, save_policy
from cleandiffuser.imitation import actions as act
from cleandiffuser.imitation.train import train_imitation
from cleandiffuser.runner.config import ConfigError
from cleandiffuser.utils.rotation import convert_rotation

TINY = ["policy.down_dims=[16,32]", "policy.diffusion_step_embed_dim=16", "policy.n_groups=4",
        "policy.noise_scheduler.bins=6", "horizon=8", "n_action_steps=4", "training.batch_size=16",
        "training.val_windows=16", "training.latency_repeats=0", "optimizer.lr_warmup_steps=2", "device=cpu",
        "task.val_ratio=0.25", "training.val_every=0", "logging.log_every=0", "logging.checkpoint_every=0",
        "logging.keep_every=0"]
KEYS = {"object": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


def osc_env_args(input_type):
    arm = {"type": "OSC_POSE", "input_type": input_type, "gripper": {"type": "GRIP"}}
    return {"env_name": "Lift", "type": 1,
            "env_kwargs": {"robots": ["Panda"], "controller_configs": {"type": "BASIC", "body_parts": {"right": arm}}}}


def axis_angles(rng, n):
    """Random rotations, the first ones at and next to angle pi (where axis-angle flips sign) and 0."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = rng.uniform(0, np.pi, n)
    angle[:6] = [np.pi, np.pi - 1e-7, np.pi - 1e-4, np.pi - 1e-2, 0.0, 1e-9]
    return axis * angle[:, None]


def same_rotation(a, b, atol):
    return np.allclose(convert_rotation(a, "axis_angle", "matrix"), convert_rotation(b, "axis_angle", "matrix"),
                       atol=atol)


# ---------------------------------------------------------------------------- the transform
def test_rotation_6d_round_trip_keeps_rotations_and_passes_position_and_gripper_through():
    rng = np.random.default_rng(0)
    n = 400
    aa = axis_angles(rng, n)
    actions = np.concatenate([rng.normal(size=(n, 3)), aa, rng.choice([-1.0, 1.0], size=(n, 1))], axis=1)
    t = act.ActionTransform("rotation_6d", 7)
    assert (t.env_dim, t.model_dim) == (7, 10)
    model = t(actions)
    assert model.shape == (n, 10) and model.dtype == actions.dtype
    np.testing.assert_array_equal(model[:, :3], actions[:, :3])
    np.testing.assert_array_equal(model[:, 9], actions[:, 6])
    np.testing.assert_allclose(model[:, 3:9], convert_rotation(aa, "axis_angle", "rotation_6d"))
    back = t.inverse(model)
    np.testing.assert_array_equal(back[:, [0, 1, 2, 6]], actions[:, [0, 1, 2, 6]])
    assert same_rotation(back[:, 3:6], aa, 1e-6)
    away = np.linalg.norm(aa, axis=1) < np.pi - 1e-3  # at pi, v and -v are the same rotation
    np.testing.assert_allclose(back[away, 3:6], aa[away], atol=1e-6)
    assert np.all(np.linalg.norm(back[:, 3:6], axis=1) <= np.pi + 1e-9)
    # the model's outputs are not exact rotations: any 6-vector decodes to one (Gram-Schmidt)
    noisy = model.copy()
    noisy[:, 3:9] += 0.05 * rng.normal(size=(n, 6))
    noisy = t.inverse(noisy)
    assert np.isfinite(noisy).all() and np.array_equal(noisy[:, 6], actions[:, 6])

    # torch, float32, batch and time axes; two arms (14 -> 20), per-arm blocks
    two = np.concatenate([actions[:50], actions[50:100]], axis=1).reshape(5, 10, 14)
    t2 = act.ActionTransform("rotation_6d", 14)
    x = torch.as_tensor(two, dtype=torch.float32)
    m = t2(x)
    assert m.shape == (5, 10, 20) and m.dtype == torch.float32
    torch.testing.assert_close(m[..., 10:13], x[..., 7:10])
    torch.testing.assert_close(m[..., 19], x[..., 13])
    b = t2.inverse(m).numpy()
    np.testing.assert_allclose(b[..., [0, 1, 2, 6, 7, 8, 9, 13]], two[..., [0, 1, 2, 6, 7, 8, 9, 13]], atol=1e-6)
    assert same_rotation(b[..., 3:6].reshape(-1, 3), two[..., 3:6].reshape(-1, 3), 1e-5)
    assert same_rotation(b[..., 10:13].reshape(-1, 3), two[..., 10:13].reshape(-1, 3), 1e-5)

    ident = act.ActionTransform("axis_angle", 2)  # the identity, any width (Push-T)
    x2 = actions[:, :2]
    assert ident(x2) is x2 and ident.inverse(x2) is x2 and ident.model_dim == 2


def test_bad_settings_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"task.rotation_rep='quat' is not one of \('axis_angle', 'rotation_6d'\)"):
        act.ActionTransform("quat", 7)
    with pytest.raises(ValueError, match=r"rotation_6d needs .*7 or 14 dims.*have 8 dims"):
        act.ActionTransform("rotation_6d", 8)
    with pytest.raises(ValueError, match=r"must have 10 dims"):
        act.ActionTransform("rotation_6d", 7).inverse(np.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"must have 7 dims"):
        act.ActionTransform("rotation_6d", 7)(np.zeros((2, 10)))
    base = ["task.dataset_path=x.hdf5"]
    with pytest.raises(ConfigError, match=r"task.rotation_rep='euler' is not one of"):
        load_imitation_config("imitation/edm_lift", base + ["task.rotation_rep=euler"])
    with pytest.raises(ConfigError, match=r"task.abs_action must be true or false"):
        load_imitation_config("imitation/edm_lift", base + ["task.abs_action=1"])
    with pytest.raises(ConfigError, match=r"7 or 14 dims"):
        load_imitation_config("imitation/edm_lift", base + ["task.rotation_rep=rotation_6d", "shape_meta.action.shape=[8]"])

    # task.abs_action against the dataset's controller
    assert act.controller_input_type(osc_env_args("delta")) == "delta"
    assert act.controller_input_type({"env_kwargs": {"controller_configs": {"type": "OSC_POSE", "control_delta": False}}}) \
        == "absolute"  # robosuite <= 1.4 configs
    assert act.controller_input_type(None) is None
    converted = act.absolute_env_args(osc_env_args("delta"))
    assert act.controller_input_type(converted) == "absolute"
    assert converted["env_kwargs"]["controller_configs"]["body_parts"]["right"]["gripper"] == {"type": "GRIP"}
    with pytest.raises(ValueError, match="no OSC_POSE"):
        act.absolute_env_args({"env_name": "Lift", "type": 1, "env_kwargs": {}})
    path = tmp_path / "delta.hdf5"
    write_robomimic_hdf5(path, demos(2), osc_env_args("delta"))
    cfg = load_imitation_config("imitation/edm_lift", [f"task.dataset_path={path}", "task.abs_action=true"])
    with pytest.raises(ConfigError, match=r"abs_action=true .*delta.*cleandiffuser.imitation.actions to-absolute"):
        load_imitation_data(cfg)
    path = tmp_path / "abs.hdf5"
    write_robomimic_hdf5(path, demos(2), osc_env_args("absolute"))
    cfg = load_imitation_config("imitation/edm_lift", [f"task.dataset_path={path}"])
    with pytest.raises(ConfigError, match=r"abs_action=false .*absolute.*set task.abs_action=true"):
        load_imitation_data(cfg)

    # a normalizer fitted on 7-d actions does not fit a rotation_6d policy
    policy = ChunkPolicy({"obs": {"s": {"shape": [3]}}, "action": {"shape": [7]}}, horizon=8, n_action_steps=4,
                         policy={"down_dims": [16, 32], "diffusion_step_embed_dim": 16, "n_groups": 4},
                         rotation_rep="rotation_6d")
    norm = LinearNormalizer.fit({"s": np.zeros((4, 3)), "action": np.random.rand(4, 7)})
    with pytest.raises(ValueError, match=r"does not fit the model's 10-d actions"):
        policy.set_normalizer(norm)


# ---------------------------------------------------------------------------- training with rotation_6d
def demos(n, T=24, seed=0):
    """Absolute-action-like low-dim demos: gripper pointing down (rotations near angle pi, where
    axis-angle flips sign), the action a noisy function of the state."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = np.cumsum(rng.normal(scale=0.05, size=(T, 19)), axis=0)
        obs, i = {}, 0
        for k, d in KEYS.items():
            obs[k] = x[:, i:i + d]
            i += d
        yaw = 0.3 * np.tanh(x[:, 0])
        rot = convert_rotation(np.stack([np.full(T, np.pi), np.zeros(T), np.zeros(T)], 1), "axis_angle", "matrix")
        rz = convert_rotation(np.stack([np.zeros(T), np.zeros(T), yaw], 1), "axis_angle", "matrix")
        aa = convert_rotation(rz @ rot, "matrix", "axis_angle")
        pos = np.array([0.5, 0.0, 0.1]) + 0.05 * np.tanh(x[:, 1:4])
        grip = np.where(x[:, 4] > 0, 1.0, -1.0)[:, None]
        out.append({"obs": obs, "actions": np.concatenate([pos, aa, grip], 1), "states": x,
                    "rewards": np.zeros(T), "dones": np.zeros(T)})
    return out


def test_rotation_6d_training_outputs_env_actions_and_round_trips_through_get_policy(tmp_path):
    path = tmp_path / "lift_abs.hdf5"
    write_robomimic_hdf5(path, demos(6), osc_env_args("absolute"))
    cfg = load_imitation_config("imitation/edm_lift", [f"task.dataset_path={path}", *TINY, "training.steps=4",
                                                       "task.abs_action=true", "task.rotation_rep=rotation_6d"])
    data = load_imitation_data(cfg)
    assert data.train.action_dim == 10 and data.train.gather([0])["action"].shape == (1, 8, 10)
    report = train_imitation(cfg, run_dir=tmp_path / "run", progress=False, log=lambda *_: None)
    assert report["rows"] and np.isfinite(report["rows"][0]["val_mse"])

    policy = get_policy(tmp_path / "run", device="cpu")
    assert (policy.rotation_rep, policy.action_dim, policy.env_action_dim) == ("rotation_6d", 10, 7)
    assert policy.model.x_shape == (8, 10)
    obs = {k: np.random.default_rng(1).normal(size=(2, 2, d)).astype(np.float32) for k, d in KEYS.items()}
    out = policy.predict_action(obs)
    assert out["action"].shape == (2, 4, 7) and out["action_pred"].shape == (2, 8, 7)
    a = out["action_pred"].numpy()
    assert np.isfinite(a).all() and np.all(np.linalg.norm(a[..., 3:6], axis=-1) <= np.pi + 1e-5)
    # the gripper dim is the unnormalized model output, in the data's range [-1, 1]
    assert np.all(np.abs(a[..., 6]) <= 1 + 1e-5)

    # a checkpoint saved without a run config remembers the setting through the policy's spec
    save_policy(tmp_path / "bare.ckpt", policy)
    again = get_policy(tmp_path / "bare.ckpt", device="cpu")
    assert again.rotation_rep == "rotation_6d"
    torch.manual_seed(0)
    x = again.predict_action(obs)["action_pred"]
    torch.manual_seed(0)
    torch.testing.assert_close(x, policy.predict_action(obs)["action_pred"])


# ---------------------------------------------------------------------------- delta -> absolute (robosuite)
@pytest.fixture(scope="module")
def lift_episode():
    """30 steps of robosuite Lift with delta actions: the scripted demonstrator, then 6 random steps with
    entries beyond the controller's input range (clipped by it). (env_args, delta env, episode)."""
    pytest.importorskip("robosuite")
    from cleandiffuser.datagen import robosuite_demos
    from cleandiffuser.env import robosuite as rd

    env_args = rd.make_env_args("lift")
    env = rd.make_env(env_args, seed=0)
    raw = env.reset()
    scripted = robosuite_demos.scripted_policy("lift", rng=0)
    scripted.reset(env, raw)
    rng = np.random.default_rng(0)
    states, actions, obs = [], [], []
    for t in range(30):
        states.append(env.sim.get_state().flatten().copy())
        obs.append(rd.robomimic_obs(raw, list(KEYS)))
        a = scripted(raw) if t < 24 else np.concatenate([rng.uniform(-1.5, 1.5, 6), [rng.choice([-1.0, 1.0])]])
        raw, _, _, _ = env.step(a)
        actions.append(a)
    episode = {"obs": {k: np.stack([o[k] for o in obs]) for k in KEYS}, "actions": np.array(actions),
               "states": np.array(states), "rewards": np.zeros(30), "dones": np.zeros(30),
               "model_file": env.sim.model.get_xml()}
    yield env_args, env, episode
    env.close()


def replay_eef(env, episode, actions):
    from cleandiffuser.env import robosuite as rd

    rd.reset_to(env, episode["states"][0], episode["model_file"])
    return np.array([env.step(a)[0]["robot0_eef_pos"] for a in actions])


def test_absolute_actions_reach_the_same_end_effector_positions_as_the_deltas(lift_episode):
    from cleandiffuser.env import robosuite as rd

    env_args, env, ep = lift_episode
    abs_actions = act.absolute_actions(env, ep["states"], ep["actions"], ep["model_file"])
    assert abs_actions.shape == (30, 7)
    np.testing.assert_array_equal(abs_actions[:, 6], ep["actions"][:, 6])
    # targets within one action's reach (5 cm per axis, clipped) of the end effector, in the base frame
    base = np.array(env.robots[0].composite_controller.get_controller_base_pose("right")[0])
    reach = np.abs(abs_actions[:, :3] + base - ep["obs"]["robot0_eef_pos"])
    assert reach.max() < 0.05 * 1.01 + 2e-3
    eef_delta = replay_eef(env, ep, ep["actions"])
    abs_env = rd.make_env(act.absolute_env_args(env_args))
    abs_env.reset()
    try:
        eef_abs = replay_eef(abs_env, ep, abs_actions)
    finally:
        abs_env.close()
    assert np.abs(eef_abs - eef_delta).max() < 3e-3  # metres
    assert np.abs(eef_delta[-1] - eef_delta[0]).max() > 0.03  # the arm did move


def test_to_absolute_command_rewrites_actions_and_env_args(lift_episode, tmp_path, capsys):
    env_args, _, ep = lift_episode
    src, dst = tmp_path / "delta.hdf5", tmp_path / "abs.hdf5"
    write_robomimic_hdf5(src, [ep, {**ep, "actions": ep["actions"][::-1].copy()}], env_args)
    assert act.main(["to-absolute", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "replaying every one of the 2 episodes" in out and "2/2 episodes" in out
    expected = act.delta_to_absolute_actions(env_args, [ep])[0]
    with h5py.File(src, "r") as f, h5py.File(dst, "r") as g:
        np.testing.assert_allclose(g["data/demo_0/actions"][()], expected, atol=1e-9)
        assert g["data/demo_1/actions"].shape == (30, 7)
        for k in KEYS:
            np.testing.assert_array_equal(g[f"data/demo_0/obs/{k}"][()], f[f"data/demo_0/obs/{k}"][()])
        np.testing.assert_array_equal(g["data/demo_1/states"][()], f["data/demo_1/states"][()])
        new_args = json.loads(g["data"].attrs["env_args"])
    assert act.controller_input_type(new_args) == "absolute"
    assert new_args["env_kwargs"]["controller_configs"] == act.absolute_env_args(env_args)["env_kwargs"][
        "controller_configs"]
    assert act.main(["to-absolute", str(dst), str(tmp_path / "again.hdf5")]) == 2  # already absolute
    assert "nothing to convert" in capsys.readouterr().err
