"""Dataset generation on gymnasium MuJoCo: rollouts, named datasets, SAC exact resume."""
import json
import shutil

import numpy as np
import pytest
import torch

import cleandiffuser.datagen as dg
import cleandiffuser.datagen.generate as generate
from cleandiffuser.dataset import qlearning_dataset, read_d4rl_hdf5, registered_datasets
from cleandiffuser.env import normalized_score


# --------------------------------------------------------------------------- no MuJoCo needed
def test_normalized_score_formula():
    assert normalized_score("halfcheetah", -280.178953) == pytest.approx(0.0, abs=1e-12)
    assert normalized_score("HalfCheetah-v5", 12135.0) == pytest.approx(100.0)
    assert normalized_score("hopper-medium-cd-v0", 3234.3) == pytest.approx(100.0)
    assert normalized_score("walker2d", 1.629008) == pytest.approx(0.0, abs=1e-12)
    lo, hi = 1.629008, 4592.3
    assert normalized_score("Walker2d-v5", 2000.0) == pytest.approx(100 * (2000.0 - lo) / (hi - lo))
    lo, hi = -20.272305, 3234.3
    np.testing.assert_allclose(normalized_score("hopper", np.array([lo, hi, 1000.0])),
                               [0.0, 100.0, 100 * (1000.0 - lo) / (hi - lo)])
    with pytest.raises(KeyError):
        normalized_score("ant", 1.0)


def test_names_and_missing_dataset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANDIFFUSER_DATA", str(tmp_path))
    assert "halfcheetah-medium-cd-v0" in registered_datasets()
    assert "walker2d-medium-replay-cd-v0" in registered_datasets()
    assert dg.parse_dataset_name("hopper-medium-expert-cd-v0") == ("hopper", "medium-expert")
    assert dg.dataset_path("hopper-random-cd-v0") == tmp_path / "hopper-random-cd-v0.hdf5"
    with pytest.raises(ValueError):
        dg.parse_dataset_name("halfcheetah-medium-v2")  # D4RL's own names are not ours
    with pytest.raises(dg.GeneratedDatasetMissingError) as e:
        qlearning_dataset("walker2d-medium-cd-v0")
    msg = str(e.value)
    assert "cleandiffuser dataset make walker2d-medium-cd-v0" in msg and str(tmp_path) in msg
    assert isinstance(e.value, FileNotFoundError)


# --------------------------------------------------------------------------- MuJoCo
@pytest.fixture
def mujoco_env():
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")


def _tiny_cfg(**kw):
    from cleandiffuser.datagen.sac import SACConfig

    base = dict(env_id="Hopper-v5", seed=3, hidden=(64, 64), batch_size=64, warmup_steps=100,
                chunk_size=64, buffer_size=128)
    base.update(kw)
    return SACConfig(**base)


KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def test_rollouts_deterministic_and_registered_names_load(mujoco_env, tmp_path, monkeypatch):
    from cleandiffuser.datagen.generate import rollout
    from cleandiffuser.datagen.policy import load_actor_snapshot, save_actor_snapshot
    from cleandiffuser.datagen.sac import SAC

    monkeypatch.setenv("CLEANDIFFUSER_DATA", str(tmp_path / "data"))
    # random policy: same seed -> identical arrays; other seed -> different
    a, sa = rollout("Hopper-v5", "random", 2000, seed=5)
    b, _ = rollout("Hopper-v5", "random", 2000, seed=5)
    c, _ = rollout("Hopper-v5", "random", 2000, seed=6)
    for k in KEYS:
        assert np.array_equal(a[k], b[k]), k
    assert not np.array_equal(a["observations"], c["observations"])
    assert a["terminals"].any() and sa["n_complete_episodes"] > 10  # hopper falls under random actions
    assert np.array_equal(a["observations"][1:][~(a["terminals"] | a["timeouts"])[:-1]],
                          a["next_observations"][:-1][~(a["terminals"] | a["timeouts"])[:-1]])
    assert a["terminals"][-1] or a["timeouts"][-1]  # the data end closes the last episode

    # freshly initialised SAC actor snapshot, sampled stochastically
    agent = SAC(17, 6, _tiny_cfg(env_id="HalfCheetah-v5", hidden=(256, 256)))
    snap = save_actor_snapshot(agent.actor, tmp_path / "actor.safetensors", "HalfCheetah-v5", 0, -np.ones(6), np.ones(6))
    actor = load_actor_snapshot(snap)
    obs = np.random.default_rng(0).standard_normal((4, 17)).astype(np.float32)
    with torch.no_grad():
        mu, _ = agent.actor(torch.from_numpy(obs))
    np.testing.assert_allclose(actor.act(obs), torch.tanh(mu).numpy(), atol=1e-5)
    p1 = dg.generate_dataset(tmp_path / "p1.hdf5", "HalfCheetah-v5", snap, 1500, seed=2, name="t")
    p2 = dg.generate_dataset(tmp_path / "p2.hdf5", "HalfCheetah-v5", snap, 1500, seed=2, name="t")
    d1, d2 = read_d4rl_hdf5(p1), read_d4rl_hdf5(p2)
    for k in KEYS:
        assert np.array_equal(d1[k], d2[k]), k
    assert d1["timeouts"].sum() == 2 and d1["timeouts"][999] and not d1["terminals"].any()
    m = d1["metadata"]
    assert m["env_id"] == "HalfCheetah-v5" and m["seed"] == 2 and m["policy"] == "actor.safetensors"
    assert len(m["policy_sha256"]) == 64 and m["n_complete_episodes"] == 1 and m["n_episodes"] == 2
    assert m["normalized_score"] == pytest.approx(normalized_score("halfcheetah", m["return_mean"]))
    for key in ("gymnasium_version", "mujoco_version", "library_version", "generation_command"):
        assert m[key]
    q = qlearning_dataset(p1)
    assert q["observations"].shape == (1498, 17)  # the two timeout rows are dropped

    # a named dataset, made into the data dir and loaded by name
    path = dg.make_dataset("hopper-random-cd-v0", steps=2000, seed=5, progress=False, log=None)
    assert path == tmp_path / "data" / "hopper-random-cd-v0.hdf5"
    q = qlearning_dataset("hopper-random-cd-v0")
    keep = ~a["timeouts"]
    np.testing.assert_array_equal(q["observations"], a["observations"][keep])
    np.testing.assert_array_equal(q["terminals"], a["terminals"][keep].astype(np.float32))
    info = dg.dataset_info("hopper-random-cd-v0")
    assert info["transitions"] == 2000 and info["complete_episodes"] == sa["n_complete_episodes"]
    assert info["return_mean"] == pytest.approx(sa["return_mean"], rel=1e-5)
    with pytest.raises(FileExistsError):
        dg.make_dataset("hopper-random-cd-v0", steps=2000, progress=False, log=None)


def test_sac_polyak_update():
    from cleandiffuser.datagen.sac import SAC

    agent = SAC(5, 2, _tiny_cfg(hidden=(16, 16)))
    with torch.no_grad():  # make target and online differ
        for p in agent.critic_target.parameters():
            p.add_(1.0)
    old = [p.clone() for p in agent.critic_target.parameters()]
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(8, 5, generator=g), "act": torch.rand(8, 2, generator=g) * 2 - 1,
             "rew": torch.randn(8, generator=g), "next_obs": torch.randn(8, 5, generator=g), "terminated": torch.zeros(8)}
    agent.update(batch)
    tau = agent.cfg.tau
    for o, t, p in zip(old, agent.critic_target.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(t, (1 - tau) * o + tau * p)


def test_sac_resume_is_exact_and_feeds_datasets(mujoco_env, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from cleandiffuser.datagen.sac import _lock_run_dir, load_replay_transitions, read_eval_csv, train_sac

    monkeypatch.setenv("CLEANDIFFUSER_DATA", str(tmp_path / "data"))
    kw = dict(total_steps=300, checkpoint_every=150, snapshot_every=100, eval_episodes=1, log=None)
    ra, rb = tmp_path / "a", tmp_path / "b"
    train_sac(ra, _tiny_cfg(), **kw)

    class Crash(Exception):
        pass

    def crash(step):
        if step == 230:  # after the checkpoint at 150, a snapshot at 200 and a chunk at 192
            raise Crash

    with pytest.raises(Crash):
        train_sac(rb, _tiny_cfg(), callback=crash, **kw)
    assert json.loads((rb / "latest.json").read_text())["step"] == 150
    with pytest.raises(ValueError, match="different config"):
        train_sac(rb, _tiny_cfg(seed=4), **kw)
    held = _lock_run_dir(rb)  # another live process training into the same directory
    with pytest.raises(RuntimeError, match="another process"):
        train_sac(rb, None, **kw)
    held.close()
    train_sac(rb, None, **kw)  # restart: resumes from step 150

    def final(run):
        return load_file(str(run / json.loads((run / "latest.json").read_text())["dir"] / "weights.safetensors"))

    wa, wb = final(ra), final(rb)
    assert wa.keys() == wb.keys() and any(k.startswith("critic_opt.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ea, eb = read_eval_csv(ra), read_eval_csv(rb)
    assert [r["env_steps"] for r in eb] == [100, 200, 300]
    assert [r["eval_return_mean"] for r in ea] == [r["eval_return_mean"] for r in eb]
    ta, tb = load_replay_transitions(ra, 300), load_replay_transitions(rb, 300)
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), k
    assert (rb / "snapshots" / "actor_000000200.safetensors").is_file()

    # medium-replay / medium(-expert) from the run's selection
    sel = dg.select_snapshots(rb)
    mr = dg.make_dataset("hopper-medium-replay-cd-v0", run_dir=rb, progress=False, log=None)
    d = read_d4rl_hdf5(mr)
    n = sel["medium_replay_transitions"]
    assert len(d["rewards"]) == n
    np.testing.assert_array_equal(d["observations"], ta["obs"][:n])
    np.testing.assert_array_equal(d["terminals"], ta["terminated"][:n])

    # the registered medium-replay: run a's buffer up to the shipped snapshot's step, only from the run that made
    # it; run b (bit-identical to a) stands in for the run, a perturbed copy of the snapshot for a rerun's
    shipped = tmp_path / "shipped" / "actor_000000200.safetensors"
    shipped.parent.mkdir()
    shutil.copy(ra / "snapshots" / shipped.name, shipped)
    monkeypatch.setattr(generate, "shipped_policy", lambda env, kind: shipped)
    monkeypatch.setattr(generate, "_default_run_dir", lambda env: rb)
    d = read_d4rl_hdf5(dg.make_dataset("hopper-medium-replay-cd-v0", out=tmp_path / "mr.hdf5", progress=False,
                                       log=None))
    assert len(d["rewards"]) == 200 and d["metadata"]["replay_run_made_shipped_snapshot"]
    tensors = load_file(shipped)
    tensors = {k: v + 1e-3 for k, v in tensors.items()}
    save_file(tensors, shipped)
    with pytest.raises(generate.BehaviourPolicyMissingError, match="--from-rerun"):
        dg.make_dataset("hopper-medium-replay-cd-v0", out=tmp_path / "mr2.hdf5", progress=False, log=None)
    d = read_d4rl_hdf5(dg.make_dataset("hopper-medium-replay-cd-v0", out=tmp_path / "mr2.hdf5", from_rerun=True,
                                       progress=False, log=None))
    assert len(d["rewards"]) == 200 and not d["metadata"]["replay_run_made_shipped_snapshot"]
    np.testing.assert_array_equal(d["observations"], ta["obs"][:200])
    from cleandiffuser.datagen.cli import main  # the flag reaches make_dataset from the command line
    assert main(["dataset", "make", "hopper-medium-replay-cd-v0", "--out", str(tmp_path / "mr3.hdf5")]) == 2
    assert main(["dataset", "make", "hopper-medium-replay-cd-v0", "--out", str(tmp_path / "mr3.hdf5"),
                 "--from-rerun"]) == 0
    meta = read_d4rl_hdf5(tmp_path / "mr3.hdf5")["metadata"]
    assert not meta["replay_run_made_shipped_snapshot"] and meta["generation_command"].endswith("--from-rerun")

    me = dg.make_dataset("hopper-medium-expert-cd-v0", run_dir=rb, steps=400, progress=False, log=None)
    d = read_d4rl_hdf5(me)
    assert len(d["rewards"]) == 800 and (d["terminals"][399] or d["timeouts"][399])
    assert d["metadata"]["components"] == ["hopper-medium-cd-v0", "hopper-expert-cd-v0"]
    assert qlearning_dataset("hopper-expert-cd-v0")["observations"].shape[1] == 11


def test_cli_make_and_info(mujoco_env, tmp_path, monkeypatch, capsys):
    from cleandiffuser.datagen.cli import main

    monkeypatch.setenv("CLEANDIFFUSER_DATA", str(tmp_path))
    assert main(["dataset", "make", "walker2d-random-cd-v0", "--steps", "1200", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "normalized score" in out
    assert main(["dataset", "info", "walker2d-random-cd-v0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transitions"] == 1200 and info["metadata"]["seed"] == 1
    assert info["metadata"]["generation_command"] == "cleandiffuser dataset make walker2d-random-cd-v0 --seed 1 --steps 1200"
    assert main(["dataset", "info", "hopper-expert-cd-v0"]) == 2
    assert "cleandiffuser dataset make hopper-expert-cd-v0" in capsys.readouterr().err
    assert main(["dataset", "make", "hopper-medium-cd-v0", "--run", str(tmp_path / "nope"), "--steps", "10"]) == 2
    assert "train_behaviour" in capsys.readouterr().err


def test_shipped_policies_make_medium_and_expert_data_without_a_run(mujoco_env, tmp_path, monkeypatch):
    """A fresh checkout regenerates the medium and expert data from the snapshots shipped in the package."""
    from cleandiffuser.datagen.generate import make_dataset, shipped_policy

    monkeypatch.chdir(tmp_path)  # no runs/behaviour here
    # 2000 steps each. HalfCheetah: 2 episodes, medium ~40 normalized, expert ~76; Hopper medium: a few episodes
    # of 1567 +- 738 (~49); Walker2d medium: 2 episodes of 2976 +- 1391 (~65; seed 0 gives 45); Hopper expert:
    # 2855 +- 726 (~88); Walker2d expert: 4335 +- 360 (~94); random data scores ~0 on all three.
    for env, kind, lo, hi in (("halfcheetah", "medium", 25, 55), ("halfcheetah", "expert", 65, 90),
                              ("hopper", "medium", 15, 100), ("walker2d", "medium", 15, 100),
                              ("hopper", "expert", 40, 115), ("walker2d", "expert", 60, 115)):
        path = shipped_policy(env, kind)
        assert path is not None and path.is_file() and path.stat().st_size < 1_000_000
        out = make_dataset(f"{env}-{kind}-cd-v0", out=tmp_path / f"{env}-{kind}.hdf5", steps=2000, progress=False,
                           log=None)
        meta = read_d4rl_hdf5(out)["metadata"]
        assert meta["behaviour_policy"] == f"shipped snapshot {path.name}"
        assert lo < meta["normalized_score"] < hi, (kind, meta["normalized_score"])
