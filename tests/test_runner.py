"""The train / eval / report commands: run directories, checkpoints, exact resume, errors, DDP."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cleandiffuser.cli import main
from cleandiffuser.runner import ConfigError, load_agent, load_config, train
from cleandiffuser.runner.config import CONFIG_DIR

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

# a tiny IDQL-CT agent: fast enough for a few hundred CPU steps in a test
TINY = ["agent.actor_params.hidden_dim=32", "agent.actor_params.n_blocks=1", "agent.actor_params.emb_dim=16",
        "agent.critic.hidden_dim=32", "agent.num_candidates=4", "batch_size=32", "env=HalfCheetah-v5",
        "eval.episodes=1", "eval.n_envs=1", "precision=fp32", "compile=false"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from cleandiffuser.datagen.generate import generate_dataset
    path = tmp_path_factory.mktemp("data") / "halfcheetah-tiny.hdf5"
    generate_dataset(path, "HalfCheetah-v5", "random", 2000, 0, "halfcheetah-tiny", "test", False, {})
    return str(path)


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_cli_train_writes_a_complete_run_and_eval_rescoring(tiny_dataset, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    rc = main(["train", "idql", "--dataset", tiny_dataset, "--run-dir", str(run), "--no-progress", "steps=200",
               "log_every=50", "checkpoint_every=100", "keep_every=100", "eval.sample_steps=[1,2]", *TINY])
    assert rc == 0
    out = capsys.readouterr().out
    assert "run directory" in out and "| 1 |" in out and "| 2 |" in out
    for name in ("config.yaml", "environment.json", "log.csv", "report.json", "report.md", "learning_curve.png",
                 "score_vs_nfe.png", "checkpoints/latest.ckpt", "checkpoints/step_00000100.ckpt"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    log = read_log(run)
    assert [int(r["step"]) for r in log] == [50, 100, 150, 200]
    assert all(np.isfinite(float(r[k])) for r in log for k in ("q_loss", "v_loss", "actor_loss"))
    report = json.loads((run / "report.json").read_text())
    assert [r["sample_steps"] for r in report["rows"]] == [1, 2]
    assert [r["nfe"] for r in report["rows"]] == [1, 2]
    assert all(np.isfinite(r["score_mean"]) and r["episodes"] == 1 for r in report["rows"])
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["mujoco"]

    # the same run scored again with other sample steps, through `cleandiffuser eval`
    # (an override may follow a multi-value option; a bad one is named, so it was applied)
    assert main(["eval", str(run), "--sample-steps", "4", "agent.num_candidates=0", "--episodes", "1"]) == 2
    assert "num_candidates" in capsys.readouterr().err
    assert main(["eval", str(run), "--sample-steps", "4", "agent.num_candidates=2", "--episodes", "1"]) == 0
    assert "| 4 |" in capsys.readouterr().out

    # --video: each row's first episode rendered (here a stand-in renderer) into the row's steps_<K> folder
    rendered = []

    def fake_render(env_id, reset_seed, actions, path_stem, **kw):
        rendered.append((env_id, len(actions)))
        return str(path_stem) + ".npz", "fake"

    monkeypatch.setattr("cleandiffuser.env.evaluation.render_replay", fake_render)
    assert main(["eval", str(run), "--sample-steps", "1", "2", "--episodes", "1", "--video"]) == 0
    assert "video (sample_steps=2): " in capsys.readouterr().out
    rows = json.loads((run / "eval" / "step_00000200" / "report.json").read_text())["rows"]
    assert [r["video"] for r in rows] == [str(run / "eval" / "step_00000200" / f"steps_{k}" / "video.npz")
                                          for k in (1, 2)]
    assert rendered == [("HalfCheetah-v5", 1000)] * 2  # the episode's actions, replayed by the renderer

    # `cleandiffuser report` aggregates finished runs into a table (one row per sample-step setting)
    assert main(["report", str(run), "--out", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert table.count("| idql-ct | halfcheetah-tiny |") == 2 and "| 200 | 1 | 1 |" in table

    # a second train into the same directory refuses instead of overwriting
    assert main(["train", "idql", "--dataset", tiny_dataset, "--run-dir", str(run), "steps=10", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_resume_continues_the_exact_loss_sequence(tiny_dataset, tmp_path, compiled):
    overrides = ["steps=40", "log_every=1", "checkpoint_every=15", "eval.episodes=0", *TINY, f"compile={compiled}"]
    cfg = load_config("idql", [f"dataset={tiny_dataset}", *overrides])
    train(cfg, run_dir=tmp_path / "straight", progress=False, log=lambda *_: None)
    train(cfg, run_dir=tmp_path / "split", progress=False, log=lambda *_: None, stop_at=23)
    assert len(read_log(tmp_path / "split")) == 23
    assert main(["train", "--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    straight, split = read_log(tmp_path / "straight"), read_log(tmp_path / "split")
    assert [r["step"] for r in split] == [str(s) for s in range(1, 41)]
    walls = [float(r["wall_s"]) for r in split]  # training time adds up over the two sessions
    assert walls == sorted(walls) and walls[23] >= walls[22]
    for a, b in zip(straight, split):
        assert (a["q_loss"], a["v_loss"], a["actor_loss"]) == (b["q_loss"], b["v_loss"], b["actor_loss"]), a["step"]
    # the two final checkpoints act identically
    obs = torch.randn(5, 17)
    acts = []
    for name in ("straight", "split"):
        run = load_agent(tmp_path / name)
        torch.manual_seed(0)
        acts.append(run.agent.act(obs))
    assert torch.equal(acts[0], acts[1])


def test_idql_cd_distills_inside_one_run_and_resumes_across_the_phase_switch(tiny_dataset, tmp_path):
    overrides = [f"dataset={tiny_dataset}", "steps=30", "log_every=1", "checkpoint_every=0", "eval.episodes=0",
                 "agent.actor=cd", "agent.distill_steps=10", *TINY]
    cfg = load_config("idql", overrides)
    train(cfg, run_dir=tmp_path / "a", progress=False, log=lambda *_: None)
    train(cfg, run_dir=tmp_path / "b", progress=False, log=lambda *_: None, stop_at=25)  # inside distillation
    train(cfg.copy(), run_dir=tmp_path / "b", resume=True, progress=False, log=lambda *_: None)
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["actor_loss"] for r in a] == [r["actor_loss"] for r in b]
    run = load_agent(tmp_path / "a")
    assert run.agent.teacher is not None and run.agent.solver == "consistency"
    assert type(run.agent.actor).__name__ == "ContinuousConsistencyModel"


def test_load_agent_acts_on_raw_observations(tiny_dataset, tmp_path):
    cfg = load_config("idql", [f"dataset={tiny_dataset}", "steps=5", "eval.episodes=0", *TINY])
    train(cfg, run_dir=tmp_path / "r", progress=False, log=lambda *_: None)
    run = load_agent(tmp_path / "r", overrides=["agent.num_candidates=16"])
    assert run.agent.num_candidates == 16 and run.step == 5
    act = run.act(np.zeros(17))
    assert act.shape == (6,) and np.all(np.abs(act) <= 1)
    assert run.act(np.zeros((3, 17))).shape == (3, 6)


def test_bad_configs_and_paths_give_clear_errors(tiny_dataset, tmp_path, capsys):
    with pytest.raises(ConfigError, match="agent.actor_params.hidden_dim"):
        load_config("idql", ["agent.actor_params.hiden_dim=3"])
    with pytest.raises(ConfigError, match="built-in configs: .*idql"):
        load_config("nope")
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        load_config("idql", ["steps=0"])
    with pytest.raises(ValueError, match="agent.actor='xyz' is not one of"):
        train(load_config("idql", [f"dataset={tiny_dataset}", "agent.actor=xyz", *TINY]), run_dir=tmp_path / "x",
              progress=False)
    assert main(["train", "idql", "--resume", str(tmp_path / "nothing")]) == 2
    assert "takes its config from RUN_DIR/config.yaml" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "checkpoint or run directory not found" in capsys.readouterr().err
    assert main(["train", "idql", "--dataset", str(tmp_path / "missing.hdf5"), "--run-dir", str(tmp_path / "y"),
                 "--no-progress", *TINY]) == 2
    assert "missing.hdf5" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    for bad, says in (("agent.actor=ddim", "agent.actor='ddim' is not one of"),  # a message, not a traceback
                      ("agent.num_candidates=0", "agent.num_candidates must be a positive integer")):
        assert main(["train", "idql", "--dataset", tiny_dataset, "--run-dir", str(tmp_path / "z"), "--no-progress",
                     *TINY, bad]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_per_task_settings_follow_the_dataset_and_yield_to_the_command_line(tmp_path):
    from cleandiffuser.runner.config import task_key
    assert [task_key(d) for d in ("hopper-medium-expert-cd-v0", "hopper-medium-expert-v2",
                                  "/data/walker2d-medium-replay-v2.hdf5", "mine.h5")] == \
        ["hopper-medium-expert", "hopper-medium-expert", "walker2d-medium-replay", "mine"]
    assert load_config("idql").agent.weight_temperature == 100.0  # halfcheetah-medium: the file's own value
    cfg = load_config("idql", ["dataset=hopper-medium-expert-cd-v0"])
    assert cfg.agent.weight_temperature == 5.0 and list(cfg.task_settings) == ["agent.weight_temperature=5.0"]
    assert load_config("idql", ["dataset=hopper-medium-expert-v2", "agent.weight_temperature=7"]) \
        .agent.weight_temperature == 7
    assert load_config("dql", ["dataset=walker2d-medium-cd-v0"]).agent.grad_norm == 1.0
    assert load_config("edp", ["dataset=halfcheetah-medium-replay-cd-v0"]).agent.grad_norm == 2.0
    assert "per_task" not in load_config("quickstart")
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(CONFIG_DIR / "idql.yaml").read().replace("[agent.weight_temperature=5.0]", "5.0"))
    with pytest.raises(ConfigError, match="per_task must map task names to lists"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text(open(CONFIG_DIR / "idql.yaml").read().replace("[agent.weight_temperature=5.0]",
                                                                  "[agent.weight_temprature=5.0]"))
    with pytest.raises(ConfigError, match="per_task.hopper-medium-expert"):
        load_config(typo, ["dataset=hopper-medium-expert-cd-v0"])


def test_torchrun_two_cpu_ranks_stay_identical(tiny_dataset, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cleandiffuser.cli", "train", "idql", "--dataset", tiny_dataset, "--run-dir", str(run),
           "--no-progress", "steps=20", "log_every=10", "eval.episodes=0", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    assert [r["step"] for r in read_log(run)] == ["10", "20"]
    assert load_agent(run).step == 20


def test_idql_reuses_a_critic_pretrained_by_an_iql_run(tiny_dataset, tmp_path, capsys):
    """`cleandiffuser train iql`, then IDQL with agent.critic_path: the critic is that run's and stays fixed."""
    quiet = dict(progress=False, log=lambda *_: None)
    iql = load_config("iql", [f"dataset={tiny_dataset}", "steps=30", "eval.episodes=0", "compile=false",
                              "env=HalfCheetah-v5", "agent.critic.hidden_dim=32", "batch_size=32"])
    train(iql, run_dir=tmp_path / "iql", **quiet)
    pretrained = load_agent(tmp_path / "iql").agent.critic.state_dict()
    overrides = [f"dataset={tiny_dataset}", "steps=20", "log_every=1", "checkpoint_every=0", "eval.episodes=0", *TINY]
    cfg = load_config("idql", [*overrides, f"agent.critic_path={tmp_path / 'iql'}"])
    train(cfg, run_dir=tmp_path / "idql", **quiet)
    train(cfg, run_dir=tmp_path / "split", progress=False, log=lambda *_: None, stop_at=12)
    (tmp_path / "iql" / "checkpoints" / "latest.ckpt").unlink()  # the run's own checkpoints hold the critic now
    train(cfg.copy(), run_dir=tmp_path / "split", resume=True, **quiet)
    assert [r["actor_loss"] for r in read_log(tmp_path / "idql")] == \
        [r["actor_loss"] for r in read_log(tmp_path / "split")]  # resumed exactly
    assert set(read_log(tmp_path / "idql")[0]) == {"step", "wall_s", "updates_per_s", "actor_loss"}
    for name in ("idql", "split"):
        critic = load_agent(tmp_path / name).agent.critic.state_dict()
        assert all(torch.equal(critic[k], v) for k, v in pretrained.items() if k != "step"), name

    # a critic the run cannot use is refused, with the reason
    from cleandiffuser.datagen.generate import generate_dataset
    other = tmp_path / "halfcheetah-other.hdf5"
    generate_dataset(other, "HalfCheetah-v5", "random", 1500, 1, "halfcheetah-other", "test", False, {})
    train(iql, run_dir=tmp_path / "iql2", **quiet)
    bad = {"different dataset": ([f"dataset={other}"], "observation statistics differ"),
           "other critic size": (["agent.critic.hidden_dim=64"], "hidden_dim: critic 64 vs checkpoint 32"),
           "rewards scaled otherwise": (["normalize_reward=false"], "normalize_reward")}
    for what, (changes, match) in bad.items():
        cfg = load_config("idql", [*overrides, *changes, f"agent.critic_path={tmp_path / 'iql2'}"])
        with pytest.raises(ConfigError, match=match):
            train(cfg, run_dir=tmp_path / what, **quiet)
    dbc = load_config("dbc", [f"dataset={tiny_dataset}", "steps=2", "eval.episodes=0", "compile=false"])
    train(dbc, run_dir=tmp_path / "dbc", **quiet)
    cfg = load_config("idql", [*overrides, f"agent.critic_path={tmp_path / 'dbc'}"])
    with pytest.raises(ConfigError, match="holds no IQL critic"):
        train(cfg, run_dir=tmp_path / "z", **quiet)
    assert main(["train", "idql", "--dataset", tiny_dataset, "--run-dir", str(tmp_path / "w"), "--no-progress",
                 f"agent.critic_path={tmp_path / 'nowhere'}", *TINY]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_idql_cd_distills_the_edm_of_another_run(tiny_dataset, tmp_path):
    """Seed 000's edm_training -> cd_training: `agent.teacher_path` makes every update distill that run's EDM,
    which stays fixed as the teacher; the student starts as the teacher; resume is exact without the source."""
    quiet = dict(progress=False, log=lambda *_: None)
    base = [f"dataset={tiny_dataset}", "log_every=1", "checkpoint_every=0", "eval.episodes=0", *TINY]
    train(load_config("idql", [*base, "steps=30", "agent.actor=edm"]), run_dir=tmp_path / "edm", **quiet)
    edm = load_agent(tmp_path / "edm").agent.actor
    cfg = load_config("idql", [*base, "steps=20", "agent.actor=cd", f"agent.teacher_path={tmp_path / 'edm'}"])
    train(cfg, run_dir=tmp_path / "cd0", progress=False, log=lambda *_: None, stop_at=1)
    first = load_agent(tmp_path / "cd0").agent
    assert type(first.actor).__name__ == "ContinuousConsistencyModel" and first.teacher is not None
    for name, v in edm.model_ema.state_dict().items():  # the teacher is the EDM's EMA, the student started there
        assert torch.equal(first.teacher.model_ema.state_dict()[name], v), name

    train(cfg, run_dir=tmp_path / "cd", **quiet)
    train(cfg, run_dir=tmp_path / "split", stop_at=12, **quiet)
    (tmp_path / "edm" / "checkpoints" / "latest.ckpt").unlink()  # the run's own checkpoints hold the teacher now
    train(cfg.copy(), run_dir=tmp_path / "split", resume=True, **quiet)
    losses = [float(r["actor_loss"]) for r in read_log(tmp_path / "cd")]
    assert losses == [float(r["actor_loss"]) for r in read_log(tmp_path / "split")]
    assert len(losses) == 20 and all(np.isfinite(losses))
    run = load_agent(tmp_path / "cd")
    assert run.agent.solver == "consistency" and run.step == 20
    teacher = run.agent.teacher.model_ema.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in edm.model_ema.state_dict().items())  # never trained

    with pytest.raises(ValueError, match="agent.actor='ct' has no teacher"):
        train(load_config("idql", [*base, "steps=2", f"agent.teacher_path={tmp_path / 'cd'}"]),
              run_dir=tmp_path / "x", **quiet)
    with pytest.raises(ValueError, match="leave agent.distill_steps null"):
        train(load_config("idql", [*base, "steps=2", "agent.actor=cd", "agent.distill_steps=1",
                                   f"agent.teacher_path={tmp_path / 'cd'}"]), run_dir=tmp_path / "y", **quiet)
    with pytest.raises(ConfigError, match="holds no trained EDM actor"):  # a CD run's actor is the student
        train(load_config("idql", [*base, "steps=2", "agent.actor=cd", f"agent.teacher_path={tmp_path / 'cd'}"]),
              run_dir=tmp_path / "z", **quiet)
    wide = [*base, "steps=2", "agent.actor=cd", "agent.actor_params.hidden_dim=64"]
    train(load_config("idql", [*base, "steps=2", "agent.actor=edm"]), run_dir=tmp_path / "edm2", **quiet)
    with pytest.raises(ConfigError, match="agent.actor_params"):
        train(load_config("idql", [*wide, f"agent.teacher_path={tmp_path / 'edm2'}"]), run_dir=tmp_path / "w",
              **quiet)


@pytest.mark.parametrize("name", ["iql", "idql", "dql", "edp", "dbc", "fql"])
def test_compile_true_compiles_every_part_that_can_be(name):
    """Agent.compile_network (what `compile: true` calls) reaches each part's compile_network; FQL compiles its
    whole update instead. Compilation itself is lazy, so this only wraps."""
    from cleandiffuser.runner.offline import build_agent
    agent = build_agent(load_config(name), 17, 6, torch.device("cpu")).compile_network()
    compilable = [part for part in agent.parts().values() if hasattr(part, "compile_network")]
    if name == "fql":
        assert agent.compiled and not any(getattr(part, "compiled", False) for part in compilable)
    else:
        assert compilable and all(part.compiled for part in compilable)


@pytest.mark.parametrize("name", ["iql", "idql", "quickstart", "dql", "edp", "dbc", "fql"])
def test_every_builtin_config_builds_its_agent(name):
    from cleandiffuser.runner.offline import build_agent
    cfg = load_config(name)
    agent = build_agent(cfg, 17, 6, torch.device("cpu"))
    assert agent.name == cfg.algo
    act = agent.act(torch.zeros(2, 17))
    assert act.shape == (2, 6) and bool((act.abs() <= 1).all())


def test_train_on_a_generated_name_makes_the_missing_dataset_first(tmp_path, monkeypatch):
    """The README main job on a fresh machine: the named dataset does not exist yet and is generated."""
    import cleandiffuser.datagen.generate as gen

    monkeypatch.setenv("CLEANDIFFUSER_DATA", str(tmp_path / "data"))
    made = []

    def tiny_make_dataset(name, out=None, log=print, **kw):  # the real one writes 1M transitions
        made.append(name)
        path = gen.dataset_path(name)
        gen.generate_dataset(path, "HalfCheetah-v5", "random", 1500, 0, name, "test", False, {})
        return path

    monkeypatch.setattr(gen, "make_dataset", tiny_make_dataset)
    cfg = load_config("quickstart", ["steps=3", "eval.episodes=0", "compile=false", "batch_size=32",
                                     "agent.policy.hidden_dim=32", "agent.critic.hidden_dim=32",
                                     "agent.flow_params.hidden_dim=32"])
    assert cfg.dataset == "halfcheetah-medium-cd-v0"
    train(cfg, run_dir=tmp_path / "r", progress=False, log=lambda *_: None)
    assert made == ["halfcheetah-medium-cd-v0"] and (tmp_path / "data" / "halfcheetah-medium-cd-v0.hdf5").is_file()
    train(cfg, run_dir=tmp_path / "r2", progress=False, log=lambda *_: None)  # reused, not made again
    assert made == ["halfcheetah-medium-cd-v0"]


def test_report_pools_seeds_of_one_variant_only(tmp_path):
    """IDQL with different actors are different rows; seeds of one actor pool into mean ± SE."""
    from cleandiffuser.runner import aggregate_runs

    runs = []
    for actor, seed, score in (("ct", 0, 40.0), ("ct", 1, 44.0), ("edm", 0, 10.0)):
        run = tmp_path / f"{actor}-{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(f"algo: idql\nagent:\n  actor: {actor}\n")
        (run / "report.json").write_text(json.dumps({
            "algo": "idql", "dataset": "halfcheetah-medium-cd-v0", "seed": seed, "steps": 100,
            "rows": [{"sample_steps": 1, "score_mean": score, "episodes": 10, "ms_per_action": 1.0}]}))
        runs.append(run)
    rows = {r["algo"]: r for r in aggregate_runs(runs)}
    assert set(rows) == {"idql-ct", "idql-edm"}
    assert rows["idql-ct"]["seeds"] == [0, 1] and rows["idql-ct"]["score_mean"] == 42.0
    assert rows["idql-ct"]["score_se"] == pytest.approx(2.0) and rows["idql-ct"]["episodes"] == 20
    assert rows["idql-edm"]["seeds"] == [0]
    named = {r["algo"]: r for r in aggregate_runs(runs, labels={runs[2]: "idql-edm-ablation"})}
    assert set(named) == {"idql-ct", "idql-edm-ablation"}  # an experiment's own name for a variant
