"""Evaluation harness: vectorized rollouts must reproduce plain single-env rollouts exactly."""
import csv
import json
import math
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
torch = pytest.importorskip("torch")

from cleandiffuser.dataset import GaussianNormalizer  # noqa: E402
from cleandiffuser.env import EvalResult, evaluate, make_env, normalized_score  # noqa: E402
from cleandiffuser.env.evaluation import episode_seed, mean_se  # noqa: E402


def reference(env_id, policy, seed, n_episodes, max_steps, normalize=None):
    """Plain gymnasium rollouts, one env at a time: (returns, lengths, terminated, obs lists)."""
    env = make_env(env_id, max_episode_steps=max_steps)
    rets, lens, terms, seen = [], [], [], []
    for k in range(n_episodes):
        obs, _ = env.reset(seed=episode_seed(seed, k))
        ret, n, traj = 0.0, 0, []
        while True:
            x = obs if normalize is None else normalize(obs)
            x = np.asarray(x, dtype=np.float32)
            traj.append(x)
            obs, r, term, trunc, _ = env.step(np.asarray(policy(x[None]), dtype=np.float32)[0])
            ret += float(r)
            n += 1
            if term or trunc:
                break
        rets.append(ret), lens.append(n), terms.append(term), seen.append(np.stack(traj))
    env.close()
    return np.array(rets), np.array(lens), np.array(terms), seen


class Recorder:
    def __init__(self, fn):
        self.fn, self.batches = fn, []

    def __call__(self, obs):
        self.batches.append(np.array(obs, copy=True))
        return self.fn(obs)


def linear_policy(act_dim, obs_dim, seed=1):
    w = np.random.default_rng(seed).normal(size=(obs_dim, act_dim)).astype(np.float32) * 0.5
    # a sum per row, not a matmul: BLAS may round a batch of 3 rows unlike 1 row (numpy 2.4 does), and these
    # tests compare batched rollouts with single-env ones bit for bit
    return lambda o: np.tanh((np.asarray(o, dtype=np.float32)[:, :, None] * w[None]).sum(axis=1))


def test_zero_policy_halfcheetah_matches_single_env():
    pol = Recorder(lambda o: torch.zeros(o.shape[0], 6))  # torch output accepted
    res = evaluate(pol, "HalfCheetah-v5", n_envs=3, n_episodes=5, seeds=(0, 1), max_episode_steps=50, progress=False)
    assert res.returns.shape == res.lengths.shape == res.scores.shape == (10,)
    np.testing.assert_array_equal(res.seed, [0] * 5 + [1] * 5)
    np.testing.assert_array_equal(res.episode, list(range(5)) * 2)
    np.testing.assert_array_equal(res.env_index, [0, 1, 2, 0, 1] * 2)  # slots handed out at reset time
    np.testing.assert_array_equal(res.reset_seed, [episode_seed(s, k) for s in (0, 1) for k in range(5)])
    assert (res.lengths == 50).all() and not res.terminated.any()
    zero = lambda o: np.zeros((len(o), 6))  # noqa: E731
    ref = np.concatenate([reference("HalfCheetah-v5", zero, s, 5, 50)[0] for s in (0, 1)])
    np.testing.assert_allclose(res.returns, ref, rtol=1e-12, atol=0)
    assert len(np.unique(res.returns)) == 10  # distinct reset seeds -> distinct episodes
    np.testing.assert_allclose(res.scores, normalized_score("halfcheetah", ref))
    # one policy call per vector step on the whole batch: 2 rounds x 50 steps per seed
    assert len(pol.batches) == res.policy_calls == 2 * 2 * 50
    assert all(b.shape == (3, 17) and b.dtype == np.float32 for b in pol.batches)
    assert res.env_steps == 3 * 200


@pytest.mark.parametrize("kind", ["constant", "linear"])
def test_hopper_early_termination_exact_count(kind):
    pol = (lambda o: np.ones((len(o), 3))) if kind == "constant" else linear_policy(3, 11)
    kw = dict(n_episodes=7, seeds=(3,), max_episode_steps=40, progress=False)
    res = evaluate(pol, "Hopper-v5", n_envs=3, **kw)
    assert res.returns.size == 7 and list(res.episode) == list(range(7))
    ref_ret, ref_len, ref_term, _ = reference("Hopper-v5", pol, 3, 7, 40)
    np.testing.assert_array_equal(res.lengths, ref_len)
    np.testing.assert_array_equal(res.terminated, ref_term)
    np.testing.assert_allclose(res.returns, ref_ret, rtol=1e-12, atol=0)
    assert len(set(res.lengths.tolist())) > 1 and res.terminated.any()
    if kind == "linear":  # lengths 30..44: a mix of terminations and time-limit truncations
        assert not res.terminated.all()
        # episodes depend only on their reset seed, not on how they are spread over envs
        other = evaluate(pol, "Hopper-v5", n_envs=5, **kw)
        np.testing.assert_array_equal(other.returns, res.returns)
        np.testing.assert_array_equal(other.lengths, res.lengths)


def test_obs_normalizer_applied():
    rng = np.random.default_rng(0)
    norm = GaussianNormalizer(rng.normal(size=(200, 17)) * 3.0 + 5.0)
    pol = Recorder(lambda o: np.zeros((len(o), 6)))
    evaluate(pol, "HalfCheetah-v5", n_envs=2, n_episodes=2, seeds=(4,), max_episode_steps=5, obs_normalizer=norm,
             progress=False)
    _, _, _, seen = reference("HalfCheetah-v5", lambda o: np.zeros((1, 6)), 4, 2, 5, normalize=norm.normalize)
    got = np.stack(pol.batches)  # (steps, envs, obs_dim)
    assert got.shape == (5, 2, 17)
    for i in range(2):
        np.testing.assert_array_equal(got[:, i], seen[i])
    assert abs(got.mean()) > 0.5  # normalized: far from the raw observations' scale


def test_outputs_written(tmp_path):
    res = evaluate(lambda o: np.ones((len(o), 3)), "Hopper-v5", n_envs=2, n_episodes=3, seeds=(0, 5),
                   max_episode_steps=30, out_dir=tmp_path, dataset_name="hopper-medium-v2", progress=False)
    with open(tmp_path / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert [int(r["seed"]) for r in rows] == [0, 0, 0, 5, 5, 5]
    assert [int(r["episode"]) for r in rows] == [0, 1, 2] * 2
    np.testing.assert_array_equal([float(r["return"]) for r in rows], res.returns)
    np.testing.assert_array_equal([int(r["length"]) for r in rows], res.lengths)
    np.testing.assert_array_equal([int(r["env_index"]) for r in rows], res.env_index)
    scores = np.array([float(r["normalized_score"]) for r in rows])
    np.testing.assert_allclose(scores, normalized_score("hopper", res.returns), rtol=1e-12)

    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["env_id"] == "Hopper-v5" and s["dataset_name"] == "hopper-medium-v2"
    assert s["n_episodes"] == 6 and s["n_episodes_per_seed"] == 3 and s["seeds"] == [0, 5]
    assert s["return"]["mean"] == pytest.approx(res.returns.mean())
    assert s["return"]["se"] == pytest.approx(np.std(res.returns, ddof=1) / math.sqrt(6))
    assert s["normalized_score"]["se"] == pytest.approx(np.std(scores, ddof=1) / math.sqrt(6))
    seed_means = [scores[:3].mean(), scores[3:].mean()]
    assert s["per_seed"]["normalized_score_means"] == pytest.approx(seed_means)
    assert s["per_seed"]["normalized_score"]["se"] == pytest.approx(np.std(seed_means, ddof=1) / math.sqrt(2))
    assert s["episode_steps"] == int(res.lengths.sum()) and s["steps_per_s"] > 0 and s["wall_time_s"] > 0
    assert {"gymnasium", "mujoco", "numpy", "torch", "cleandiffuser"} <= set(s["versions"])


def test_summary_and_format_synthetic():
    ret = np.arange(1.0, 7.0)
    r = EvalResult(env_id="HalfCheetah-v5", seeds=(0, 1), n_episodes=3, returns=ret, lengths=np.full(6, 10),
                   scores=normalized_score("halfcheetah", ret), terminated=np.zeros(6, bool),
                   seed=np.repeat([0, 1], 3), episode=np.tile(np.arange(3), 2), env_index=np.zeros(6, int),
                   reset_seed=np.arange(6), wall_time=2.0)
    s = r.summary()
    assert s["return"]["mean"] == 3.5
    assert s["return"]["se"] == pytest.approx(math.sqrt(3.5) / math.sqrt(6))  # var([1..6], ddof=1) = 3.5
    assert s["per_seed"]["return_means"] == [2.0, 5.0]
    assert s["per_seed"]["return"]["se"] == pytest.approx(1.5)  # std([2, 5], ddof=1) / sqrt(2)
    assert s["steps_per_s"] == 30.0
    m, se = mean_se(r.scores)
    assert r.format() == f"normalized score {m:.1f} ± {se:.1f} (6 episodes, 2 seeds)"
    one = EvalResult(env_id="Foo-v0", seeds=(0,), n_episodes=1, returns=np.array([7.0]), lengths=np.array([3]),
                     scores=np.array([np.nan]), terminated=np.array([True]), seed=np.array([0]),
                     episode=np.array([0]), env_index=np.array([0]), reset_seed=np.array([0]))
    assert one.format() == "return 7.0 ± n/a (1 episodes, 1 seed)"
    json.dumps(__import__("cleandiffuser.env.evaluation", fromlist=["_json_safe"])._json_safe(one.summary()),
               allow_nan=False)


def test_async_matches_sync_and_checks_actions():
    pol = linear_policy(6, 17, seed=2)
    kw = dict(n_episodes=3, seeds=(1,), max_episode_steps=20, progress=False)
    a = evaluate(pol, "HalfCheetah-v5", n_envs=2, vectorization="async", **kw)
    b = evaluate(pol, "HalfCheetah-v5", n_envs=10, **kw)
    assert b.n_envs == 3  # capped at n_episodes
    np.testing.assert_array_equal(a.returns, b.returns)
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda o: np.zeros((len(o), 5)), "HalfCheetah-v5", n_envs=2, **kw)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate(lambda o: np.full((len(o), 6), np.nan), "HalfCheetah-v5", n_envs=2, **kw)


def test_video_or_clear_warning(tmp_path):
    from cleandiffuser.env.video import read_video

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate(lambda o: np.ones((len(o), 3)), "Hopper-v5", n_envs=2, n_episodes=2, seeds=(0,),
                       max_episode_steps=8, out_dir=tmp_path, video=True, video_size=(64, 48), progress=False)
    if res.video_path is None:  # no GL here: evaluation still completes, with a clear warning
        assert any("video rendering failed" in str(w.message) for w in caught)
    else:
        assert not any("differs" in str(w.message) for w in caught)  # replay reproduced the episode
        frames = read_video(res.video_path)  # .mp4 with the video extra, else .npz
        assert frames.shape == (res.lengths[0] + 1, 48, 64, 3) and frames.dtype == np.uint8
        assert frames.std() > 0
    assert json.loads((tmp_path / "summary.json").read_text())["video"] == res.video_path


def test_broken_mujoco_renderer_gives_an_actionable_error(monkeypatch):
    import builtins

    from cleandiffuser.env import make_env, require_mujoco
    from cleandiffuser.runner.offline import environment_info

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):  # what mujoco does under MUJOCO_GL=egl without libEGL
        if name == "mujoco":
            raise AttributeError("'NoneType' object has no attribute 'eglQueryString'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    monkeypatch.setenv("MUJOCO_GL", "egl")
    with pytest.raises(RuntimeError, match="MUJOCO_GL='egl'.*libegl1.*unset MUJOCO_GL"):
        make_env("HalfCheetah-v5", seed=0)
    with pytest.raises(RuntimeError, match="MUJOCO_GL='egl'"):
        evaluate(lambda obs: obs[:, :6] * 0, "halfcheetah", n_episodes=1)
    assert environment_info()["mujoco"].startswith("import failed: AttributeError")  # a run still starts
    monkeypatch.delenv("MUJOCO_GL")
    with pytest.raises(AttributeError):  # no backend chosen: the original error, unchanged
        require_mujoco()


def test_write_video_mp4_or_npz_round_trip(tmp_path, monkeypatch):
    from cleandiffuser.env.video import read_video, write_video

    frames = np.zeros((5, 32, 48, 3), np.uint8)
    frames[:, 8:24, :, 0] = np.linspace(0, 250, 5, dtype=np.uint8)[:, None, None]  # a band that brightens
    path = write_video(frames, tmp_path / "a", fps=10)
    back = read_video(path).astype(float)
    assert back.shape == frames.shape
    assert np.abs(back - frames).mean() < 3  # mp4 is lossy; npz exact
    with pytest.raises(ValueError, match="frames must be"):
        write_video(frames[0], tmp_path / "b", fps=10)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # no mp4 writer: frames as .npz
    path = write_video(frames, tmp_path / "c", fps=10)
    assert path.suffix == ".npz" and np.array_equal(read_video(path), frames)
    assert int(np.load(path)["fps"]) == 10
