"""Scripted robosuite demonstrations -> robomimic HDF5, and the robosuite environments they come from: replay,
resets, evaluation, videos (skipped without robosuite)."""
import numpy as np
import pytest

pytest.importorskip("robosuite")

from cleandiffuser.datagen import robosuite_demos as rd
from cleandiffuser.dataset.robomimic_format import read_robomimic_hdf5
from cleandiffuser.env import robosuite as rs


@pytest.fixture(scope="module")
def lift_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rs") / "lift.hdf5"
    report = rd.generate_demos("lift", 2, 0, path, max_attempts=6)
    return path, report


def test_report_and_file_layout(lift_file):
    path, report = lift_file
    assert report["n_demos"] == 2 and report["attempts"] >= 2
    assert 0 < report["success_rate"] <= 1 and report["mean_length"] > 0
    data = read_robomimic_hdf5(path, load_next_obs=True)
    assert len(data) == 2
    ea = data.env_args
    assert ea["env_name"] == "Lift" and ea["type"] == 1
    kw = ea["env_kwargs"]
    assert kw["robots"] == ["Panda"] and kw["control_freq"] == 20
    assert kw["controller_configs"]["body_parts"]["right"]["type"] == "OSC_POSE"
    for key in ("object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_joint_pos"):
        assert key in data.obs_keys
    for ep in data.episodes:
        T = len(ep["actions"])
        assert 0 < T <= rs.TASKS["Lift"].horizon
        assert ep["actions"].shape == (T, 7) and np.abs(ep["actions"]).max() <= 1.0
        assert ep["obs"]["object"].shape == (T, 10)
        assert ep["obs"]["robot0_eef_pos"].shape == (T, 3)
        assert ep["obs"]["robot0_eef_quat"].shape == (T, 4)
        assert ep["obs"]["robot0_gripper_qpos"].shape == (T, 2)
        assert ep["states"].shape == (T, 32)  # time + qpos (16) + qvel (15)
        assert ep["rewards"].shape == (T,) and ep["dones"].shape == (T,)
        assert ep["dones"][-1] == 1 and ep["dones"][:-1].sum() == 0
        assert ep["rewards"][-1] > 0  # sparse reward: the demo ends in success
        np.testing.assert_allclose(ep["next_obs"]["robot0_eef_pos"][:-1], ep["obs"]["robot0_eef_pos"][1:])
        assert isinstance(ep.get("model_file"), str)


def test_demos_end_in_success_and_replay(lift_file):
    path, _ = lift_file
    data = read_robomimic_hdf5(path)
    env = rs.make_env(data.env_args)
    env.reset()
    for ep in data.episodes:
        # the last recorded state (before the last action) is already a success
        rs.reset_to(env, ep["states"][-1], ep["model_file"])
        assert env._check_success()
        # the observation at a state matches the recorded one
        raw = rs.reset_to(env, ep["states"][0], ep["model_file"])
        np.testing.assert_allclose(rs.robomimic_obs(raw, ["robot0_eef_pos"])["robot0_eef_pos"],
                                   ep["obs"]["robot0_eef_pos"][0], atol=1e-6)
    # open-loop replay of the recorded actions from the recorded start reproduces the success
    out = [rs.replay_demo(data.env_args, ep, env=env) for ep in data.episodes]
    assert any(o["success_any"] for o in out), out
    env.close()


def test_seeds_give_different_demos(lift_file, tmp_path):
    path, _ = lift_file
    a = read_robomimic_hdf5(path).episodes[0]
    rd.generate_demos("lift", 1, 1, tmp_path / "lift_s1.hdf5", max_attempts=4)
    b = read_robomimic_hdf5(tmp_path / "lift_s1.hdf5").episodes[0]
    assert not np.allclose(a["states"][0], b["states"][0])  # different object placement
    n = min(len(a["actions"]), len(b["actions"]))
    assert not np.allclose(a["actions"][:n], b["actions"][:n])


def test_evaluate_policy_generic(lift_file):
    path, _ = lift_file
    data = read_robomimic_hdf5(path)
    seen = []

    def policy(obs):
        seen.append(sorted(obs))
        return np.zeros(7)

    res = rs.evaluate_policy_robosuite(policy, data.env_args, n_episodes=2, seed=0, horizon=3,
                                       obs_keys=["object", "robot0_eef_pos"])
    assert res["n_episodes"] == 2 and res["success_rate"] == 0.0 and res["success_se"] == 0.0
    assert [e["length"] for e in res["episodes"]] == [3, 3]
    assert seen[0] == ["object", "robot0_eef_pos"]


class LoggingPolicy:
    """Deterministic batch policy (move the gripper towards the object) that logs the observations of
    each episode (episodes start in index order, one reset(slot) each)."""

    def __init__(self, n_envs):
        self.episode_of = [None] * n_envs
        self.seen = []

    def reset(self, slot):
        self.episode_of[slot] = len(self.seen)
        self.seen.append([])

    def __call__(self, obs_list, slots):
        out = []
        for o, s in zip(obs_list, slots):
            self.seen[self.episode_of[s]].append(np.concatenate([o["object"], o["robot0_eef_pos"]]))
            d = np.clip(10 * (o["object"][:3] - o["robot0_eef_pos"]), -1, 1)
            out.append(np.concatenate([d, np.zeros(3), [-1.0]]))
        return out


def test_lockstep_evaluation_does_not_depend_on_n_envs(lift_file):
    """Each episode is reset from its own seed (env.rng re-seeded), so it does not matter which env runs it
    or what that env ran before."""
    env_args = read_robomimic_hdf5(lift_file[0]).env_args
    runs = {}
    for n_envs in (1, 2):
        policy = LoggingPolicy(n_envs)
        res = rs.evaluate_policy_robosuite(policy, env_args, n_episodes=2, seed=3, horizon=3, n_envs=n_envs,
                                           batched=True, obs_keys=["object", "robot0_eef_pos"])
        assert res["n_episodes"] == 2 and [e["length"] for e in res["episodes"]] == [3, 3]
        runs[n_envs] = (res, policy.seen)
    (one, seen1), (two, seen2) = runs[1], runs[2]
    assert one["episodes"] == two["episodes"]
    for a, b in zip(seen1, seen2):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    assert not np.allclose(seen1[0][0], seen1[1][0])  # the episodes start differently
    with pytest.raises(ValueError, match="batch policy"):
        rs.evaluate_policy_robosuite(lambda o: np.zeros(7), env_args, n_episodes=2, seed=0, n_envs=2)


def test_task_names():
    assert rs.task_spec("can").env_name == "PickPlaceCan"
    assert rs.task_spec("NutAssemblySquare").horizon == 400
    with pytest.raises(ValueError):
        rs.task_spec("stack")


def test_render_images_from_states(lift_file):
    """Images as --images stores them (skipped where offscreen rendering is unavailable)."""
    path, _ = lift_file
    data = read_robomimic_hdf5(path)
    ep = data.episodes[0]
    try:
        env = rs.make_env(data.env_args, has_offscreen_renderer=True)
        rs.reset_to(env, ep["states"][0], ep["model_file"])
        ims = rs.render_images_from_states(env, ep["states"][:2], size=32)
    except Exception as e:  # noqa: BLE001 - no EGL / OSMesa here
        pytest.skip(f"offscreen rendering unavailable: {type(e).__name__}: {e}")
    assert set(ims) == set(rs.IMAGE_KEYS)
    for v in ims.values():
        assert v.shape == (2, 32, 32, 3) and v.dtype == np.uint8 and v.std() > 0
    env.close()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_rendering_env_hard_resets_keep_frames_right_and_memory_flat(lift_file):
    """Each hard reset rebuilds the simulator and its render context (~330 MB under software EGL). Left to the
    garbage collector, old contexts piled up until the OOM killer came, and when one was finally collected it
    deleted the live context's framebuffer: black or garbled frames. A long-lived env must render what a
    fresh env renders for the same episode, and not grow."""
    path, _ = lift_file
    env_args = read_robomimic_hdf5(path).env_args
    try:
        env = rs.make_env(env_args, seed=0, images=True)
        rs.reset_episode(env, 0)
    except Exception as e:  # noqa: BLE001 - no EGL / OSMesa here
        pytest.skip(f"offscreen rendering unavailable: {type(e).__name__}: {e}")

    def frames(e, seed):
        raw, out = rs.reset_episode(e, seed), []
        for _ in range(3):
            out.append(rs.robomimic_obs(raw, list(rs.IMAGE_KEYS)))
            raw, *_ = e.step(np.zeros(7))
        return out

    before = _rss_mb()
    for seed in range(1, 7):
        long_lived = frames(env, seed)
    grown = _rss_mb() - before
    fresh_env = rs.make_env(env_args, seed=0, images=True)
    fresh = frames(fresh_env, 6)
    for a, b in zip(long_lived, fresh):
        for k in rs.IMAGE_KEYS:
            assert a[k].shape == (84, 84, 3) and a[k].mean() > 40  # Lift's scenes are bright
            np.testing.assert_array_equal(a[k], b[k])
    fresh_env.close()
    env.close()
    assert grown < 250, f"memory grew by {grown:.0f} MB over 6 resets"


def test_rollout_video_shows_the_first_episode(lift_file):
    """video= renders episode 0's simulator states offscreen (in a subprocess); without a GL backend the
    evaluation still completes, with a warning."""
    import warnings

    from cleandiffuser.env.evaluation import episode_seed
    from cleandiffuser.env.video import read_video

    env_args = read_robomimic_hdf5(lift_file[0]).env_args
    stem = lift_file[0].parent / "video"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = rs.evaluate_policy_robosuite(LoggingPolicy(2), env_args, n_episodes=2, seed=3, horizon=6, n_envs=2,
                                           batched=True, obs_keys=["object", "robot0_eef_pos"], video=stem,
                                           video_size=64)
    if res["video"] is None:
        assert any("video rendering failed" in str(w.message) for w in caught)
        pytest.skip("offscreen rendering unavailable")
    frames = read_video(res["video"]).astype(float)
    assert frames.shape == (7, 64, 64, 3)  # the start and 6 steps
    assert np.abs(frames[-1] - frames[0]).mean() > 0.5  # the arm moved
    env = rs.make_env(env_args, seed=3, images=True)
    starts = []
    for i in (0, 1):
        rs.reset_episode(env, episode_seed(3, i))
        state = env.sim.get_state().flatten()
        starts.append(rs.render_images_from_states(env, [state], ["agentview"], 64)["agentview_image"][0])
    env.close()
    assert np.abs(frames[0] - starts[0]).mean() < np.abs(frames[0] - starts[1]).mean()  # it shows episode 0
