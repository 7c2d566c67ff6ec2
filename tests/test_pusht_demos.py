"""Scripted Push-T demos -> Diffusion Policy zarr replay buffer (skipped without gym-pusht)."""
import json

import numpy as np
import pytest

pytest.importorskip("gym_pusht")
pytest.importorskip("zarr")

from cleandiffuser.datagen import pusht_demos as ptd
from cleandiffuser.dataset.zarr_format import read_zarr_replay, read_zarr_replay_arrays
from cleandiffuser.env import pusht


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pusht") / "demos.zarr"
    report = ptd.generate_pusht_demos(2, 0, path, max_attempts=6)
    return path, report


def test_report(demo_file):
    path, report = demo_file
    assert report["n_demos"] == 2 and 2 <= report["attempts"] <= 6
    assert 0 < report["success_rate"] <= 1
    assert report["keys"] == ["action", "keypoint", "n_contacts", "state"]
    assert len(report["demos"]) == 2 and report["out_path"] == str(path)
    for d in report["demos"]:
        assert d["final_coverage"] > pusht.SUCCESS_THRESHOLD and 0 < d["length"] <= pusht.MAX_STEPS
        assert d["reset_seed"] == pusht.reset_seeds(0, 1, offset=d["attempt"])[0]


def test_layout_shapes_and_episode_ends(demo_file):
    path, report = demo_file
    _, ends = read_zarr_replay_arrays(path)
    lengths = [d["length"] for d in report["demos"]]
    assert ends.tolist() == np.cumsum(lengths).tolist()
    eps = read_zarr_replay(path)
    assert len(eps) == 2
    for ep, T in zip(eps, lengths):
        assert set(ep) == {"state", "action", "keypoint", "n_contacts"}
        assert ep["state"].shape == (T, 5) and ep["state"].dtype == np.float32
        assert ep["action"].shape == (T, 2) and ep["action"].dtype == np.float32
        assert ep["keypoint"].shape == (T, 9, 2)
        assert ep["n_contacts"].shape == (T, 1)
        assert np.all((ep["action"] >= 0) & (ep["action"] <= 512))
        assert np.all((ep["state"][:, 4] >= 0) & (ep["state"][:, 4] <= 2 * np.pi))
        np.testing.assert_allclose(ep["keypoint"], pusht.block_keypoints(ep["state"].astype(np.float64)), atol=1e-3)


def test_keypoints_lie_on_the_block():
    import shapely

    state = np.array([100.0, 100.0, 250.0, 260.0, 1.1])
    kp = pusht.block_keypoints(state)
    poly = ptd._t_polygon(state[2:4], state[4])
    assert kp.shape == (9, 2)
    # DP samples rendered pixels (outline included) and adds U(0, 1) jitter
    assert max(poly.distance(shapely.Point(*p)) for p in kp) < 3.5


def test_replay_reproduces_each_demo(demo_file):
    path, report = demo_file
    for ep, d in zip(read_zarr_replay(path), report["demos"]):
        rep = pusht.replay_actions(ep["action"], d["reset_seed"])
        assert rep["success"] and rep["n_steps"] == len(ep["action"])
        assert rep["max_coverage"] > pusht.SUCCESS_THRESHOLD
        assert rep["coverage"][-1] == pytest.approx(d["final_coverage"], abs=1e-9)
        np.testing.assert_allclose(np.asarray(rep["obs"], dtype=np.float32), ep["state"], atol=1e-4)


def test_evaluate_trivial_and_scripted_policies():
    stay = pusht.evaluate_pusht(lambda obs: obs[:2], 2, seed=0, max_steps=15)
    assert stay["n_episodes"] == 2 and stay["success_rate"] == 0.0 and stay["success_se"] == 0.0
    assert all(e["length"] == 15 for e in stay["episodes"])
    assert 0.0 <= stay["mean_max_coverage"] <= 1.0 and stay["max_coverage_se"] >= 0.0
    assert stay["mean_max_reward"] == pytest.approx(min(1.0, stay["mean_max_coverage"] / 0.95))
    scripted = pusht.evaluate_pusht(ptd.ScriptedPusher(rng=0), 2, seed=0)
    assert scripted["success_rate"] > 0 and scripted["mean_max_coverage"] > 0.5
    again = pusht.evaluate_pusht(ptd.ScriptedPusher(rng=0), 2, seed=0)
    assert [e["length"] for e in again["episodes"]] == [e["length"] for e in scripted["episodes"]]


class BatchPusher:
    """One noise-free ScriptedPusher per env slot: a deterministic batch policy with per-episode state."""

    def __init__(self, n):
        self.pushers = [ptd.ScriptedPusher() for _ in range(n)]
        self.batches = []

    def __call__(self, obs_list, slots):
        self.batches.append(len(slots))
        return [self.pushers[s](o) for o, s in zip(obs_list, slots)]

    def reset(self, slot):
        self.pushers[slot].reset()


def test_lockstep_evaluation_does_not_depend_on_n_envs():
    """Episodes end at different steps (success or the step limit); finished envs take the next episode.
    The per-episode results are those of the one-env, per-step path."""
    sequential = pusht.evaluate_pusht(ptd.ScriptedPusher(), 4, seed=0, max_steps=150)
    for n_envs in (1, 3):
        policy = BatchPusher(n_envs)
        res = pusht.evaluate_pusht(policy, 4, seed=0, max_steps=150, n_envs=n_envs, batched=True)
        assert res.keys() == sequential.keys() and res["n_episodes"] == 4
        assert max(policy.batches) == n_envs and sum(policy.batches) == sum(e["length"] for e in res["episodes"])
        for a, b in zip(res["episodes"], sequential["episodes"]):
            assert a.keys() == b.keys()
            assert (a["success"], a["length"], a["reset_seed"]) == (b["success"], b["length"], b["reset_seed"])
            # gym-pusht sums the T's two polygons in set order (by object id): the last bit may differ
            assert a["max_coverage"] == pytest.approx(b["max_coverage"], rel=1e-12)
    assert len({e["length"] for e in sequential["episodes"]}) > 1  # the episodes did end at different steps


def test_images_and_cli(tmp_path):
    path = tmp_path / "img.zarr"
    assert ptd.main(["--n", "1", "--seed", "3", "--out", str(path), "--images", "--max-attempts", "3"]) == 0
    (ep,) = read_zarr_replay(path)
    T = len(ep["action"])
    assert ep["img"].shape == (T, 96, 96, 3) and ep["img"].dtype == np.float32
    assert 0 <= ep["img"].min() and ep["img"].max() <= 255 and ep["img"].std() > 1
    side = json.loads((tmp_path / "img.zarr.json").read_text())
    assert side["n_demos"] == 1 and side["demos"][0]["length"] == T


def test_rollout_video_replays_the_first_episode(tmp_path):
    """video= renders episode 0 (of the first seed's episodes), however many envs ran them."""
    from cleandiffuser.env.video import read_video

    res = pusht.evaluate_pusht(BatchPusher(2), 3, seed=5, max_steps=12, n_envs=2, batched=True, video=tmp_path / "v",
                             video_size=96)
    ep0, ep1 = res["episodes"][:2]
    assert set(ep0) == {"success", "max_coverage", "final_coverage", "length", "reset_seed"}  # no recorded arrays
    frames = read_video(res["video"])
    assert frames.shape == (ep0["length"] + 1, 96, 96, 3) and frames.dtype == np.uint8
    assert np.abs(frames[-1].astype(float) - frames[0]).mean() > 0.5  # the agent moved
    env = pusht.make_env("state", visualization_width=96, visualization_height=96)

    def start(reset_seed):
        env.reset(seed=reset_seed)
        return env.render().astype(float)

    first, other = start(ep0["reset_seed"]), start(ep1["reset_seed"])
    env.close()
    assert np.abs(frames[0] - first).mean() < np.abs(frames[0] - other).mean()  # it shows episode 0
