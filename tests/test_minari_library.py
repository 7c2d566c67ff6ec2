"""Datasets written by the Minari library itself (not by this library's writer) load and train here."""
import numpy as np
import pytest

from cleandiffuser.dataset import load_episodes, qlearning_dataset, recorded_env_id
from cleandiffuser.runner import ConfigError, load_config, train

minari = pytest.importorskip("minari")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")


def make_minari_dataset(dataset_id: str, lengths=(12, 7, 9), truncate_last=True):
    """Random-action Hopper episodes written by minari.create_dataset_from_buffers; the last one truncated."""
    from minari.data_collector import EpisodeBuffer  # building buffers directly needs no jax (DataCollector does)

    env = gym.make("Hopper-v5")
    env.action_space.seed(0)
    buffers = []
    for i, n in enumerate(lengths):
        obs, _ = env.reset(seed=i)
        o, a, r, term, trunc = [obs], [], [], [], []
        for t in range(n):
            act = env.action_space.sample()
            obs, rew, terminated, _, _ = env.step(act)
            o.append(obs), a.append(act), r.append(rew)
            last = t == n - 1
            term.append(terminated and not (truncate_last and i == len(lengths) - 1))
            trunc.append(last and not term[-1])
            if term[-1]:
                break
        buffers.append(EpisodeBuffer(id=i, observations=np.array(o), actions=np.array(a), rewards=r,
                                     terminations=term, truncations=trunc))
    return minari.create_dataset_from_buffers(dataset_id, buffer=buffers, env=env, algorithm_name="random",
                                              author="test", author_email="test@example.com",
                                              code_permalink="https://example.com", description="test data")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_minari_library_datasets_load_as_minari_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = make_minari_dataset("mujoco/hopper/random-test-v0")
    theirs = list(ds.iterate_episodes())
    main = tmp_path / "mujoco" / "hopper" / "random-test-v0" / "data" / "main_data.hdf5"
    for source in ("mujoco/hopper/random-test-v0", main.parent.parent, main):
        q = qlearning_dataset(source)
        np.testing.assert_allclose(q["observations"], np.concatenate([e.observations[:-1] for e in theirs]), 1e-6)
        np.testing.assert_allclose(q["next_observations"], np.concatenate([e.observations[1:] for e in theirs]),
                                   1e-6)
        np.testing.assert_allclose(q["actions"], np.concatenate([e.actions for e in theirs]), 1e-6)
        np.testing.assert_allclose(q["rewards"], np.concatenate([e.rewards for e in theirs]), 1e-5)
        np.testing.assert_array_equal(q["terminals"].astype(bool), np.concatenate([e.terminations for e in theirs]))
        assert recorded_env_id(source) == "Hopper-v5"  # from the dataset's env_spec, not its name
    ours = load_episodes("mujoco/hopper/random-test-v0")
    assert [len(e["rewards"]) for e in ours] == [len(e.rewards) for e in theirs]
    assert ours[-1]["timeouts"][-1] and not ours[-1]["terminals"].any()  # truncation ends, does not terminate


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_on_a_minari_id_evaluates_in_its_recorded_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    make_minari_dataset("mujoco/hopper/random-test-v0", lengths=(40, 30, 30))
    overrides = ["dataset=mujoco/hopper/random-test-v0", "steps=4", "batch_size=16", "log_every=2",
                 "eval.episodes=1", "eval.n_envs=1", "compile=false", "precision=fp32"]
    report = train(load_config("dbc", overrides), run_dir=tmp_path / "run", progress=False, log=lambda *_: None)
    assert report["env_id"] == "Hopper-v5" and np.isfinite(report["rows"][0]["score_mean"])
    # a recorded environment gymnasium does not know fails before training, not after it
    monkeypatch.setattr("cleandiffuser.runner.offline.recorded_env_id", lambda source: "NoSuchRobot-v0")
    with pytest.raises(ConfigError, match="'NoSuchRobot-v0' .* is not available here"):
        train(load_config("dbc", overrides), run_dir=tmp_path / "bad", progress=False, log=lambda *_: None)
    assert not (tmp_path / "bad").exists()
