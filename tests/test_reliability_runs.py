"""Issue 38, reliability of run directories: one writer per run directory and per generated dataset (an flock
that dies with its process), resumes that may only extend a run, `eval env=`, a stop on non-finite losses that
keeps the last finite checkpoint, resumed log rows equal to the uninterrupted run's, and durable atomic writes
with the umask's file mode."""
import csv
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from cleandiffuser.cli import main
from cleandiffuser.runner import ConfigError, load_agent, load_config, train
from cleandiffuser.runner.guards import NonFiniteLossError
from cleandiffuser.runner.lock import RunLockedError, lock_path_for, lock_run_dir
from cleandiffuser.serialization import load_checkpoint, save_checkpoint

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

# a tiny IDQL-CT agent (as in test_runner.py)
TINY = ["agent.actor_params.hidden_dim=32", "agent.actor_params.n_blocks=1", "agent.actor_params.emb_dim=16",
        "agent.critic.hidden_dim=32", "agent.num_candidates=4", "batch_size=32", "env=HalfCheetah-v5",
        "eval.episodes=0", "eval.n_envs=1", "precision=fp32", "compile=false"]
QUIET = dict(progress=False, log=lambda *_: None)
LOSSES = ("q_loss", "v_loss", "actor_loss")

# another process holding a lock file as ours do (flock + its PID), until it is killed
HOLDER = ("import fcntl, os, sys, time\n"
          "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
          "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
          "print('held', flush=True)\n"
          "time.sleep(600)\n")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from cleandiffuser.datagen.generate import generate_dataset
    path = tmp_path_factory.mktemp("data") / "halfcheetah-tiny.hdf5"
    generate_dataset(path, "HalfCheetah-v5", "random", 2000, 0, "halfcheetah-tiny", "test", False, {})
    return str(path)


def idql(dataset, *overrides):
    return load_config("idql", [f"dataset={dataset}", *TINY, *overrides])


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def hold_in_other_process(lock_file):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc):
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()


def all_finite(path) -> bool:
    tensors, _ = load_checkpoint(path)
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


# ---------------------------------------------------------------------------- 1. locks
def test_a_run_directory_has_one_trainer_and_a_killed_holder_leaves_no_lock(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = hold_in_other_process(run / ".lock")
    try:
        with pytest.raises(RunLockedError, match=rf"another process \(pid {holder.pid}\) is training in this run"):
            train(idql(tiny_dataset, "steps=5"), run_dir=run, **QUIET)
        assert main(["train", "idql", "--dataset", tiny_dataset, "--run-dir", str(run), "--no-progress", "steps=5",
                     *TINY]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(run) in err and f"pid {holder.pid}" in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written by the refused trainers
    finally:
        kill(holder)

    # the killed holder's lock went with it; the trainer holds the lock until it returns
    locked_while_training = []

    def log(msg):
        if msg.startswith("trained"):
            with pytest.raises(RunLockedError):
                with lock_run_dir(run):
                    pass
            locked_while_training.append(True)

    train(idql(tiny_dataset, "steps=5"), run_dir=run, progress=False, log=log)
    assert locked_while_training and load_agent(run).step == 5
    with lock_run_dir(run):  # released on return
        pass

    # a resume is refused as well, before it reads or writes anything
    with lock_run_dir(run):
        assert main(["train", "--resume", str(run), "--no-progress", "steps=8"]) == 2
    assert "is training in this run directory" in capsys.readouterr().err
    assert load_agent(run).step == 5


def test_dataset_make_locks_its_output_file(tmp_path, capsys):
    out = tmp_path / "data" / "halfcheetah-random-cd-v0.hdf5"
    out.parent.mkdir()
    make = ["dataset", "make", "halfcheetah-random-cd-v0", "--out", str(out), "--steps", "300"]
    holder = hold_in_other_process(lock_path_for(out))
    try:
        assert main(make) == 2
        err = capsys.readouterr().err
        assert f"another process (pid {holder.pid}) is making this dataset" in err and str(out) in err
        assert not out.exists()
    finally:
        kill(holder)
    assert main(make) == 0 and out.is_file()
    assert main(make) == 2 and "exists (use --force" in capsys.readouterr().err

    # train's path (ensure_generated_dataset) waits for another maker instead, then uses its file
    from cleandiffuser.datagen.generate import make_dataset
    out.unlink()
    holder = hold_in_other_process(lock_path_for(out))
    try:
        with pytest.raises(RunLockedError, match="is making this dataset"):
            make_dataset("halfcheetah-random-cd-v0", out=out, steps=300, log=None)
    finally:
        kill(holder)
    assert make_dataset("halfcheetah-random-cd-v0", out=out, steps=300, log=None, wait=True) == out


def test_imitation_trainer_locks_its_run_directory(tmp_path, capsys):
    from cleandiffuser.imitation import run_from_cli
    run = tmp_path / "edm"
    run.mkdir()
    with lock_run_dir(run):
        assert run_from_cli("imitation/edm_lift", [f"task.dataset_path={lift_file(tmp_path)}", *IMITATION_TINY,
                                                   "training.steps=2"], str(run), False, False) == 2
    err = capsys.readouterr().err
    assert f"another process (pid {os.getpid()}) is training in this run directory" in err
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


# ---------------------------------------------------------------------------- 2. resume only extends; eval env=
def test_resume_may_only_extend_the_run(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train(idql(tiny_dataset, "steps=20", "log_every=5"), run_dir=run, stop_at=12, **QUIET)
    with pytest.raises(ConfigError, match="steps=8 is below its step 12"):
        train(idql(tiny_dataset, "steps=8", "log_every=5"), run_dir=run, resume=True, **QUIET)
    refused = {"steps=8": "steps=8 is below its step 12",
               "seed=1": "seed: 0 -> 1",
               "agent.actor_params.hidden_dim=64": "agent.actor_params.hidden_dim: 32 -> 64",
               "normalize_reward=false": "normalize_reward: True -> False",
               "agent.actor=edm": "agent.actor: 'ct' -> 'edm'",
               f"dataset={tmp_path / 'other.hdf5'}": "dataset: "}
    for override, says in refused.items():
        assert main(["train", "--resume", str(run), "--no-progress", override]) == 2, override
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert "seed: 0" in (run / "config.yaml").read_text()  # a refused resume wrote nothing
    assert load_agent(run).step == 12
    # acting-only settings may change; the run then extends to its steps
    assert main(["train", "--resume", str(run), "--no-progress", "agent.num_candidates=8"]) == 0
    assert load_agent(run).step == 20 and load_agent(run).agent.num_candidates == 8


def test_eval_env_is_honoured_when_the_sizes_match_and_refused_otherwise(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train(idql(tiny_dataset, "steps=3"), run_dir=run, **QUIET)
    assert main(["eval", str(run), "env=Hopper-v5", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "Hopper-v5 has observations (11,) and actions (3,)" in err and "(17,)" in err and "(6,)" in err
    assert main(["eval", str(run), "env=NoSuchEnv-v0", "--episodes", "1"]) == 2
    assert "NoSuchEnv-v0" in capsys.readouterr().err
    assert main(["eval", str(run), "env=HalfCheetah-v4", "--episodes", "1", "--sample-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "on HalfCheetah-v4" in out
    report = json.loads((run / "eval" / "step_00000003-HalfCheetah-v4" / "report.json").read_text())
    assert report["env_id"] == "HalfCheetah-v4" and report["rows"][0]["episodes"] == 1


# ---------------------------------------------------------------------------- 3. non-finite losses
@pytest.mark.parametrize("log_every, caught_at", [(10, 30), (0, 40)], ids=["at-log-row", "at-checkpoint"])
def test_a_nan_loss_stops_training_and_keeps_the_last_finite_checkpoint(tiny_dataset, tmp_path, monkeypatch,
                                                                        log_every, caught_at):
    from cleandiffuser.algorithms.idql import IDQLAgent
    update, calls = IDQLAgent.update, []

    def update_that_diverges_at_step_25(self, batch):
        out = update(self, batch)
        calls.append(1)
        return {**out, "actor_loss": float("nan")} if len(calls) == 25 else out

    monkeypatch.setattr(IDQLAgent, "update", update_that_diverges_at_step_25)
    run = tmp_path / "run"
    cfg = idql(tiny_dataset, "steps=60", f"log_every={log_every}", "checkpoint_every=20")
    with pytest.raises(NonFiniteLossError, match=rf"'actor_loss' became nan between steps \d+ and {caught_at}"):
        train(cfg, run_dir=run, **QUIET)
    assert len(calls) == caught_at  # stopped at the first check after the NaN
    latest = run / "checkpoints" / "latest.ckpt"
    assert load_checkpoint(latest)[1]["step"] == 20 and all_finite(latest)
    if log_every:
        assert [r["step"] for r in read_log(run / "log.csv")] == ["10", "20"]


def test_huge_rewards_without_normalization_fail_the_cli_in_one_line(tiny_dataset, tmp_path, capsys):
    from cleandiffuser.dataset import read_d4rl_hdf5, write_d4rl_hdf5
    data = read_d4rl_hdf5(tiny_dataset)
    keys = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
    huge = tmp_path / "halfcheetah-huge.hdf5"
    write_d4rl_hdf5(huge, {**{k: data[k] for k in keys}, "rewards": data["rewards"] * 1e30})
    run = tmp_path / "run"
    assert main(["train", "idql", "--dataset", str(huge), "--run-dir", str(run), "--no-progress", "steps=20",
                 "log_every=10", "normalize_reward=false", *TINY]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'q_loss' became" in err and "learning rate" in err and "unnormalized" in err
    assert not (run / "checkpoints" / "latest.ckpt").exists() and not (run / "report.json").exists()


# ---------------------------------------------------------------------------- 4. log rows after resume
def test_resumed_log_rows_average_the_same_steps_as_the_uninterrupted_run(tiny_dataset, tmp_path):
    cfg = idql(tiny_dataset, "steps=24", "log_every=4", "checkpoint_every=10", "keep_every=10")
    train(cfg, run_dir=tmp_path / "straight", **QUIET)
    # killed at step 13, after the checkpoint of step 10 (its kept copy stands in for latest.ckpt then)
    split = tmp_path / "split"
    train(cfg, run_dir=split, stop_at=13, **QUIET)
    shutil.copyfile(split / "checkpoints" / "step_00000010.ckpt", split / "checkpoints" / "latest.ckpt")
    train(cfg.copy(), run_dir=split, resume=True, **QUIET)
    # and stopped at step 10 itself (the stop's own checkpoint)
    train(cfg, run_dir=tmp_path / "stopped", stop_at=10, **QUIET)
    train(cfg.copy(), run_dir=tmp_path / "stopped", resume=True, **QUIET)
    straight = read_log(tmp_path / "straight" / "log.csv")
    assert [r["step"] for r in straight] == [str(s) for s in range(4, 25, 4)]
    for name in ("split", "stopped"):
        rows = read_log(tmp_path / name / "log.csv")
        assert [[r[k] for k in ("step", *LOSSES)] for r in rows] == \
               [[r[k] for k in ("step", *LOSSES)] for r in straight], name


# ---------------------------------------------------------------------------- 5. atomic writes
def test_atomic_writes_use_the_umask_mode_and_fsync_before_and_after_the_rename(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "a.ckpt", {"x": torch.zeros(2)}, {"step": 1})
        from cleandiffuser.dataset import write_d4rl_hdf5
        n = 4
        write_d4rl_hdf5(tmp_path / "d.hdf5", {"observations": np.zeros((n, 2), np.float32),
                                              "actions": np.zeros((n, 1), np.float32),
                                              "rewards": np.zeros(n, np.float32), "terminals": np.zeros(n, bool),
                                              "timeouts": np.zeros(n, bool)})
    finally:
        os.umask(old)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d.hdf5").stat().st_mode & 0o777 == 0o640

    events = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(fd):
        events.append("fsync " + ("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        fsync(fd)

    def recorded_replace(src, dst):
        events.append("replace")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    save_checkpoint(tmp_path / "a.ckpt", {"x": torch.ones(2)}, {"step": 2})
    assert events == ["fsync file", "replace", "fsync directory"]  # the data is on disk before the rename is
    assert load_checkpoint(tmp_path / "a.ckpt")[1]["step"] == 2


def test_resume_removes_temp_files_of_dead_writers_and_keeps_the_umask_mode(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        train(idql(tiny_dataset, "steps=6"), run_dir=run, stop_at=3, **QUIET)
        stale = run / "checkpoints" / ".latest.ckpt.k3x9q2ab.tmp"
        stale.write_bytes(b"half a checkpoint")
        train(idql(tiny_dataset, "steps=6"), run_dir=run, resume=True, **QUIET)
    finally:
        os.umask(old)
    assert not stale.exists()
    assert (run / "checkpoints" / "latest.ckpt").stat().st_mode & 0o777 == 0o644
    assert load_agent(run).step == 6


# ---------------------------------------------------------------------------- the imitation trainer
IMITATION_TINY = ["policy.down_dims=[16,32]", "policy.diffusion_step_embed_dim=16", "policy.n_groups=4",
                  "policy.noise_scheduler.bins=6", "horizon=8", "n_action_steps=4", "training.batch_size=16",
                  "training.val_windows=16", "training.latency_repeats=0", "optimizer.lr_warmup_steps=5",
                  "device=cpu", "task.val_ratio=0.25", "training.val_every=0"]
KEYS = {"object": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


def lift_file(tmp_path):
    """6 low-dim demos of 24 steps (as in test_imitation_train.py, smaller)."""
    path = tmp_path / "lift_tiny.hdf5"
    if path.is_file():
        return str(path)
    from cleandiffuser.dataset import write_robomimic_hdf5
    rng = np.random.default_rng(0)
    w = rng.normal(size=(19, 7)) * 0.3
    demos = []
    for _ in range(6):
        x = np.cumsum(rng.normal(scale=0.1, size=(24, 19)), axis=0)
        obs, i = {}, 0
        for k, d in KEYS.items():
            obs[k] = x[:, i:i + d]
            i += d
        demos.append({"obs": obs, "actions": np.tanh(x @ w), "states": x, "rewards": np.zeros(24),
                      "dones": np.zeros(24)})
    write_robomimic_hdf5(path, demos, {"env_name": "Lift", "type": 1, "env_kwargs": {}})
    return str(path)


def test_imitation_resume_rules_log_rows_temp_files_and_nan_stop(tmp_path, monkeypatch, capsys):
    from cleandiffuser.imitation import load_imitation_config, run_from_cli, train_imitation
    from cleandiffuser.imitation.policy import ChunkPolicy
    overrides = [f"task.dataset_path={lift_file(tmp_path)}", *IMITATION_TINY, "training.steps=20",
                 "logging.log_every=4", "logging.checkpoint_every=10", "logging.keep_every=0"]
    cfg = load_imitation_config("imitation/edm_lift", overrides)
    train_imitation(cfg, run_dir=tmp_path / "straight", **QUIET)
    split = tmp_path / "split"
    assert train_imitation(cfg, run_dir=split, stop_at=10, **QUIET) == {}

    # only an extension of the same training resumes
    for override, says in {"training.steps=6": "training.steps=6 is below its step 10",
                           "seed=3": "seed: 0 -> 3",
                           "policy.down_dims=[16,16]": "policy.down_dims: [16, 32] -> [16, 16]",
                           "optimizer.lr=0.5": "optimizer.lr: 0.0001 -> 0.5"}.items():
        assert run_from_cli(None, [override], str(split), True, False) == 2, override
        assert says in capsys.readouterr().err
    stale = split / "checkpoints" / ".latest.ckpt.a1b2c3d4.tmp"
    stale.write_bytes(b"")
    assert run_from_cli(None, ["policy.num_inference_steps=5"], str(split), True, False) == 0
    assert not stale.exists()
    a, b = read_log(tmp_path / "straight" / "log.csv"), read_log(split / "log.csv")
    assert [(r["step"], r["loss"]) for r in a] == [(r["step"], r["loss"]) for r in b]  # row 12: steps 9-12 both

    # a NaN loss: stop with a one-line error, the last finite checkpoint kept
    update, calls = ChunkPolicy.update, []

    def update_that_diverges_at_step_15(self, batch, lr=None):
        out = update(self, batch, lr=lr)
        calls.append(1)
        return {**out, "loss": float("inf")} if len(calls) == 15 else out

    monkeypatch.setattr(ChunkPolicy, "update", update_that_diverges_at_step_15)
    run = tmp_path / "diverged"
    assert run_from_cli("imitation/edm_lift", overrides, str(run), False, False) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'loss' became inf between steps 13 and 16" in err
    latest = run / "checkpoints" / "latest.ckpt"
    assert load_checkpoint(latest)[1]["run_step"] == 10 and all_finite(latest)
    capsys.readouterr()
