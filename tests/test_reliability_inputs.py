"""Issue 38, inputs: bad config values, data and files are refused before any work, with one clear message
that names the key or file (and, through the CLI, one `error:` line and exit code 2 instead of a traceback)."""
import h5py
import numpy as np
import pytest

from cleandiffuser.cli import main
from cleandiffuser.dataset import DatasetFormatError, qlearning_dataset, write_d4rl_hdf5
from cleandiffuser.runner import ConfigError, load_config

# a tiny IDQL agent, as tests/test_runner.py's
TINY = ["agent.actor_params.hidden_dim=32", "agent.actor_params.n_blocks=1", "agent.actor_params.emb_dim=16",
        "agent.critic.hidden_dim=32", "agent.num_candidates=4", "batch_size=32", "eval.episodes=0",
        "precision=fp32", "compile=false"]


def transitions(n=60, obs_dim=17, act_dim=6, action_scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return {"observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-action_scale, action_scale, (n, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32), "terminals": np.zeros(n, bool),
            "timeouts": np.arange(n) % 20 == 19}


@pytest.fixture()
def tiny_file(tmp_path):
    return str(write_d4rl_hdf5(tmp_path / "halfcheetah-tiny.hdf5", transitions()))


def one_error_line(capsys) -> str:
    """The CLI's stderr: exactly one `error: ...` line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------------- 1. config values
@pytest.mark.parametrize("override, says", [
    ("agent.weight_temperature=.nan", "agent.weight_temperature must be a finite number >= 0, got nan"),
    ("steps=true", "steps must be a positive integer (>= 1), got true"),
    ("eval.episodes=-1", "eval.episodes must be an integer in [0, 999999]"),
    ("eval.n_envs=0", "eval.n_envs must be a positive integer (>= 1), got 0"),
    ("seed=abc", "seed must be an integer in [0, 4294967295], got 'abc'"),
    ("seed=-1", "seed must be an integer in [0, 4294967295], got -1"),
    ("eval.sample_steps=[0]", "eval.sample_steps must be null or a positive integer"),
    ("eval.sample_steps=[]", "got []"),
    ("eval.seeds=[0,0]", "eval.seeds must be a non-empty list of distinct items"),
    ("batch_size=2.5", "batch_size must be a positive integer (>= 1), got 2.5"),
    ("normalize_reward=1", "normalize_reward must be true or false, got 1"),
    ("clip_actions=always", "clip_actions must be true or false, got 'always'"),
    ("agent.critic.expectile=1.0", "agent.critic.expectile must be a finite number in (0, 1), got 1.0"),
    ("agent.actor_params.lr=0", "agent.actor_params.lr must be a finite number > 0, got 0"),
    ("agent.actor_params.dropout=1.0", "agent.actor_params.dropout must be a finite number in [0, 1)"),
    ("agent.distill_steps=0", "agent.distill_steps must be null or a positive integer"),
    ("agent.selection=best", "agent.selection='best' is not one of 'softmax', 'greedy', 'expectile'"),
])
def test_offline_config_values_are_type_and_range_checked(override, says):
    with pytest.raises(ConfigError) as info:
        load_config("idql", [override])
    assert says in str(info.value)


@pytest.mark.parametrize("algo, override, says", [
    ("iql", "agent.beta=-1.0", "agent.beta must be a finite number >= 0"),
    ("iql", "agent.actor_lr=.inf", "agent.actor_lr must be a finite number > 0, got inf"),
    ("iql", "eval.sample_steps=[2]", "eval.sample_steps=[2] is not one of null, [null] (iql has no sampler"),
    ("dql", "agent.tau=0", "agent.tau must be a finite number in (0, 1]"),
    ("dql", "agent.lr_decay=1", "agent.lr_decay must be true or false"),
    ("dql", "eval.sample_steps=[6]", "the dql actor samples with at most 5 steps"),
    ("edp", "agent.grad_norm=0", "agent.grad_norm must be null or a finite number > 0 (null: no clipping)"),
    ("edp", "agent.ema_every=0", "agent.ema_every must be a positive integer"),
    ("dbc", "agent.temperature=-1", "agent.temperature must be a finite number >= 0"),
    ("dbc", "agent.actor_params.diffusion_steps=0", "agent.actor_params.diffusion_steps must be a positive integer"),
    ("idql", "agent.actor=ddpm eval.sample_steps=[1,8]", "the idql actor samples with at most 5 steps"),
])
def test_each_algorithms_agent_values_are_checked(algo, override, says):
    with pytest.raises(ConfigError) as info:
        load_config(algo, override.split())
    assert says in str(info.value)


@pytest.mark.parametrize("name", ["iql", "idql", "quickstart", "dql", "edp", "dbc", "fql"])
def test_builtin_configs_pass_the_value_checks(name):
    assert load_config(name).clip_actions is False


def test_a_bad_value_stops_train_before_it_reads_the_data(tmp_path, capsys):
    """eval.sample_steps=[0] used to be found by the evaluation after training; now before the data is read."""
    run = tmp_path / "run"
    assert main(["train", "idql", "--dataset", str(tmp_path / "missing.hdf5"), "--run-dir", str(run),
                 "--no-progress", "eval.sample_steps=[0]"]) == 2
    assert "eval.sample_steps" in one_error_line(capsys)
    assert not run.exists()


def test_imitation_numeric_settings_are_checked():
    from cleandiffuser.imitation.config import load_imitation_config
    base = ["task.dataset_path=demos.zarr"]
    assert load_imitation_config("imitation/edm_pusht", base).optimizer.lr > 0
    for override, says in (("optimizer.lr=0", "optimizer.lr must be a finite number > 0, got 0"),
                           ("optimizer.betas=[0.9]", "optimizer.betas must be a 2-item list"),
                           ("policy.ema_rate=.nan", "policy.ema_rate must be a finite number in [0, 1], got nan"),
                           ("seed=true", "seed must be an integer"),
                           ("policy.noise_scheduler.sigma_min=100.0", "must be below policy.noise_scheduler.sigma_max"),
                           ):
        with pytest.raises(ConfigError) as info:
            load_imitation_config("imitation/edm_pusht", [*base, override])
        assert says in str(info.value), override


# ---------------------------------------------------------------------- 2. data checks at load
def test_float64_values_beyond_float32_are_refused_naming_file_key_and_index(tmp_path):
    data = transitions()
    path = tmp_path / "huge.hdf5"
    with h5py.File(path, "w") as f:  # written raw: the library's writer refuses such data too
        for key, value in data.items():
            f.create_dataset(key, data=value.astype(np.float64) if key == "observations" else value)
        f["observations"][3, 2] = 1e39
    with pytest.raises(DatasetFormatError) as info:
        qlearning_dataset(str(path))
    message = str(info.value)
    assert str(path) in message and "observations" in message and "index 3" in message and "1e+39" in message
    with pytest.raises(DatasetFormatError, match="beyond float32"):
        write_d4rl_hdf5(tmp_path / "again.hdf5", {**data, "observations": data["observations"].astype(float) * 1e39})


@pytest.mark.parametrize("layout", ["all rows timeouts", "a single row"])
def test_data_without_usable_transitions_is_an_error_naming_the_file(tmp_path, layout):
    data = transitions(n=5 if layout == "all rows timeouts" else 1)
    data["timeouts"] = np.ones(len(data["rewards"]), bool) if layout == "all rows timeouts" else np.zeros(1, bool)
    path = write_d4rl_hdf5(tmp_path / "empty.hdf5", data)
    with pytest.raises(DatasetFormatError, match="no usable transitions") as info:
        qlearning_dataset(str(path))
    assert str(path) in str(info.value)


def test_actions_outside_the_actor_range_warn_or_are_clipped_on_request(tmp_path):
    from cleandiffuser.runner.data_checks import ActionBoundsWarning
    from cleandiffuser.runner.offline import load_training_data
    path = write_d4rl_hdf5(tmp_path / "wide.hdf5", transitions(action_scale=2.0))
    actions = qlearning_dataset(str(path))["actions"]
    share = np.mean(np.abs(actions) > 1)
    cfg = load_config("idql", [f"dataset={path}", *TINY])
    with pytest.warns(ActionBoundsWarning) as caught:
        dataset, _ = load_training_data(cfg)
    message = str(caught[0].message)
    assert str(path) in message and f"({share:.2%})" in message
    assert f"max |a| = {np.abs(actions).max():.4g}" in message and "clip_actions=true" in message
    assert float(dataset.act.abs().max()) > 1  # warned, not changed
    clipped, _ = load_training_data(load_config("idql", [f"dataset={path}", *TINY, "clip_actions=true"]))
    assert float(clipped.act.abs().max()) == 1.0
    assert np.array_equal(clipped.act.numpy(), np.clip(dataset.act.numpy(), -1, 1))


def test_observation_size_unlike_the_eval_env_is_an_error_before_training(tiny_file, tmp_path):
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    from cleandiffuser.runner import train
    from cleandiffuser.runner.offline import load_training_data
    cfg = load_config("idql", [f"dataset={tiny_file}", *TINY, "eval.episodes=1", "env=Hopper-v5"])
    with pytest.raises(ConfigError) as info:
        load_training_data(cfg)
    assert "observations of size 17" in str(info.value) and "Hopper-v5 has observations of size 11" in str(info.value)
    with pytest.raises(ConfigError, match="Hopper-v5"):
        train(cfg, run_dir=tmp_path / "run", progress=False, log=lambda *_: None)
    assert not (tmp_path / "run" / "checkpoints").exists()
    # a named environment is checked even without evaluation; the right one passes
    with pytest.raises(ConfigError, match="Hopper-v5"):
        load_training_data(load_config("idql", [f"dataset={tiny_file}", *TINY, "env=Hopper-v5"]))
    assert load_training_data(load_config("idql", [f"dataset={tiny_file}", *TINY, "eval.episodes=1",
                                                   "env=HalfCheetah-v5"]))[1] == "HalfCheetah-v5"


# ---------------------------------------------------------------------- 3. the CLI: one line, exit 2
def test_cli_reports_an_invalid_yaml_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "mine.yaml"
    bad.write_text("algo: idql\nsteps: [1, 2\nbatch_size: 3\n")
    assert main(["train", "--config-name", str(bad)]) == 2
    assert "mine.yaml is not valid YAML" in one_error_line(capsys)
    assert main(["train", str(bad)]) == 2
    assert "mine.yaml" in one_error_line(capsys)


def test_cli_report_and_dataset_info_name_the_missing_or_bad_path(tmp_path, capsys):
    assert main(["report", str(tmp_path / "no-such-run")]) == 2
    assert "no-such-run" in one_error_line(capsys)
    bad = tmp_path / "notes.hdf5"
    bad.write_text("not an HDF5 file")
    assert main(["dataset", "info", str(bad)]) == 2
    assert "notes.hdf5" in one_error_line(capsys)


def test_cli_keeps_the_traceback_of_a_genuine_bug(tmp_path, monkeypatch):
    def broken(*_):
        raise KeyError("a bug, not a usage error")

    monkeypatch.setattr("cleandiffuser.runner.aggregate_runs", broken)
    with pytest.raises(KeyError):
        main(["report", str(tmp_path)])


def test_cli_names_bad_critic_and_teacher_paths(tiny_file, tmp_path, capsys):
    not_a_checkpoint = tmp_path / "critic.ckpt"
    not_a_checkpoint.write_text("just text")
    common = ["train", "idql", "--dataset", tiny_file, "--no-progress", *TINY]
    assert main([*common, "--run-dir", str(tmp_path / "a"), f"agent.critic_path={not_a_checkpoint}"]) == 2
    line = one_error_line(capsys)
    assert "agent.critic_path" in line and "critic.ckpt" in line and "not a cleandiffuser checkpoint" in line
    assert main([*common, "--run-dir", str(tmp_path / "b"), "agent.actor=cd",
                 f"agent.teacher_path={tmp_path / 'gone'}"]) == 2
    line = one_error_line(capsys)
    assert "agent.teacher_path" in line and "gone" in line

    from cleandiffuser.diffusion import ContinuousEDM
    from cleandiffuser.nn_condition import IdentityCondition
    from cleandiffuser.nn_diffusion import IDQLMlp
    model = ContinuousEDM(IDQLMlp(17, 6, emb_dim=16, hidden_dim=16, n_blocks=1), IdentityCondition(dropout=0.0))
    model.save(tmp_path / "edm.ckpt")  # one model's checkpoint, not a run's
    assert main([*common, "--run-dir", str(tmp_path / "c"), "agent.actor=cd",
                 f"agent.teacher_path={tmp_path / 'edm.ckpt'}"]) == 2
    assert "is not a run checkpoint" in one_error_line(capsys)
    assert not any((tmp_path / d).exists() for d in "abc")


@pytest.fixture()
def finished_runs(tiny_file, tmp_path):
    """An iql and an idql run of two steps each (no evaluation)."""
    pytest.importorskip("gymnasium")
    from cleandiffuser.runner import train
    quiet = dict(progress=False, log=lambda *_: None)
    iql = load_config("iql", [f"dataset={tiny_file}", "steps=2", "eval.episodes=0", "compile=false",
                              "agent.critic.hidden_dim=32", "batch_size=32"])
    train(iql, run_dir=tmp_path / "iql", **quiet)
    train(load_config("idql", [f"dataset={tiny_file}", "steps=2", *TINY]), run_dir=tmp_path / "idql", **quiet)
    return tmp_path / "iql", tmp_path / "idql"


def test_cli_resume_across_algorithms_or_sizes_is_a_one_line_error(finished_runs, capsys):
    iql, idql = finished_runs
    assert main(["train", "--resume", str(iql), "--no-progress", "algo=idql", "steps=4"]) == 2  # was a KeyError
    line = one_error_line(capsys)
    assert "algo=idql" in line and "'iql' run" in line and str(iql) in line
    assert main(["train", "--resume", str(idql), "--no-progress", "agent.actor_params.hidden_dim=64",
                 "steps=4"]) == 2  # was load_state_dict's RuntimeError
    assert "hidden_dim" in one_error_line(capsys)
    assert main(["eval", str(idql), "agent.actor_params.hidden_dim=64", "--episodes", "1"]) == 2
    line = one_error_line(capsys)
    assert "another size" in line and "latest.ckpt" in line


def test_cli_resume_of_a_run_whose_config_is_not_yaml(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("algo: idql\n  steps: : 3\n")
    assert main(["train", "--resume", str(run)]) == 2
    assert "config.yaml is not valid YAML" in one_error_line(capsys)


# ---------------------------------------------------------------------- 4. robomimic writer
def test_robomimic_writer_names_demo_key_and_row_of_a_partly_nan_row(tmp_path):
    from cleandiffuser.dataset.robomimic_format import write_robomimic_hdf5
    t = 4
    demo = {"obs": {"eef": np.zeros((t, 3), np.float32)}, "actions": np.zeros((t, 2), np.float32),
            "states": np.zeros((t, 5)), "rewards": np.zeros(t), "dones": np.zeros(t)}
    demo["obs"]["eef"][2, 1] = np.nan  # one entry of row 2: the row is only partly NaN
    with pytest.raises(DatasetFormatError) as info:
        write_robomimic_hdf5(tmp_path / "demos.hdf5", [demo, demo], env_args={"env_name": "Lift"})
    message = str(info.value)
    assert "data/demo_0/obs/eef" in message and "row 2, entry 1" in message
    assert not (tmp_path / "demos.hdf5").exists()
