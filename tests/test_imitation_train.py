"""The imitation trainer end to end on a tiny robomimic file: run directory, exact resume, the
teacher -> student pipeline, get_policy on the results, clear errors for bad configs; `cleandiffuser
eval RUN_DIR` on imitation runs; the Push-T configs with short real rollouts."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cleandiffuser.cli import main as cli_main
from cleandiffuser.dataset import write_robomimic_hdf5
from cleandiffuser.env.video import read_video
from cleandiffuser.imitation import (
    PolicyWrapper,
    evaluate_run_imitation,
    get_policy,
    is_imitation_config,
    is_imitation_run,
    load_imitation_config,
    load_imitation_data,
    run_from_cli,
    train_imitation,
)
from cleandiffuser.imitation.checkpoint import read_policy_checkpoint
from cleandiffuser.imitation.evaluate import is_imitation_target
from cleandiffuser.runner.config import ConfigError

# the Lift configs' keys and shapes, a tiny network (horizon 8 -> two U-Net levels), few steps
TINY = ["policy.down_dims=[16,32]", "policy.diffusion_step_embed_dim=16", "policy.n_groups=4",
        "policy.noise_scheduler.bins=6", "horizon=8", "n_action_steps=4", "training.batch_size=16",
        "training.val_windows=32", "training.latency_repeats=2", "optimizer.lr_warmup_steps=5", "device=cpu",
        "task.val_ratio=0.25"]
KEYS = {"object": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


@pytest.fixture(scope="module")
def lift_file(tmp_path_factory):
    """8 low-dim demos of 30 steps: the action is a fixed linear function of the state plus noise."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(19, 7)) * 0.3
    demos = []
    for _ in range(8):
        x = np.cumsum(rng.normal(scale=0.1, size=(30, 19)), axis=0)
        obs, i = {}, 0
        for k, d in KEYS.items():
            obs[k] = x[:, i:i + d]
            i += d
        actions = np.tanh(x @ w) + 0.01 * rng.normal(size=(30, 7))
        demos.append({"obs": obs, "actions": actions, "states": x, "rewards": np.zeros(30), "dones": np.zeros(30)})
    path = tmp_path_factory.mktemp("data") / "lift_tiny.hdf5"
    write_robomimic_hdf5(path, demos, {"env_name": "Lift", "type": 1, "env_kwargs": {}})
    return str(path)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def raw_obs(To=2):
    return {k: np.random.default_rng(1).normal(size=(1, To, d)).astype(np.float32) for k, d in KEYS.items()}


def test_train_writes_a_complete_run_and_get_policy_loads_it(lift_file, tmp_path, capsys):
    run = tmp_path / "edm"
    rc = run_from_cli("imitation/edm_lift", [f"task.dataset_path={lift_file}", *TINY, "training.steps=24",
                                             "training.val_every=8", "logging.log_every=4",
                                             "logging.checkpoint_every=8", "logging.keep_every=16"],
                      str(run), False, False)
    assert rc == 0
    out = capsys.readouterr().out
    assert "heun bins=6" in out and "run directory" in out
    for name in ("config.yaml", "environment.json", "log.csv", "val.csv", "report.json", "report.md",
                 "checkpoints/latest.ckpt", "checkpoints/step_00000016.ckpt"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    log = read_csv(run / "log.csv")
    assert [int(r["step"]) for r in log] == [4, 8, 12, 16, 20, 24]
    assert all(np.isfinite(float(r["loss"])) for r in log)
    lrs = [float(r["lr"]) for r in log]
    assert lrs[0] < lrs[1] and lrs[-1] < lrs[1]  # linear warm-up, then cosine decay
    val = read_csv(run / "val.csv")
    assert [int(r["step"]) for r in val] == [8, 16, 24] and all(float(r["val_mse"]) > 0 for r in val)
    report = json.loads((run / "report.json").read_text())
    assert report["kind"] == "edm" and report["n_train_episodes"] == 6 and report["n_val_episodes"] == 2
    (row,) = report["rows"]
    assert row["nfe"] == 11 and row["ms_per_action"] > 0 and np.isfinite(row["val_mse"])
    assert json.loads((run / "environment.json").read_text())["torch"] == torch.__version__

    policy = get_policy(run, device="cpu")  # a run directory: its latest checkpoint
    assert policy.inference_mode and policy.cfg.logging.name == "edm_lift" and policy.step == 24
    out = policy.predict_action(raw_obs())
    assert out["action"].shape == (1, 4, 7) and out["action_pred"].shape == (1, 8, 7)
    assert torch.isfinite(out["action_pred"]).all()
    pw = PolicyWrapper(policy)
    actions = [pw.get_action({k: v[0, 0] for k, v in raw_obs().items()}) for _ in range(5)]
    assert all(a.shape == (7,) for a in actions) and pw.n_predictions == 2


def test_resume_reproduces_the_loss_sequence_exactly(lift_file, tmp_path):
    overrides = [f"task.dataset_path={lift_file}", *TINY, "training.steps=20", "training.val_every=5",
                 "logging.log_every=1", "logging.checkpoint_every=5", "logging.keep_every=0",
                 "training.latency_repeats=0", "policy.dropout=0.1"]
    cfg = load_imitation_config("imitation/edm_lift", overrides)
    quiet = dict(progress=False, log=lambda *_: None)
    straight = train_imitation(cfg, run_dir=tmp_path / "straight", **quiet)
    assert train_imitation(cfg, run_dir=tmp_path / "split", stop_at=12, **quiet) == {}
    # the interrupted run checkpointed at step 12 (not a checkpoint_every multiple); resume from its config.yaml
    assert run_from_cli(None, [], str(tmp_path / "split"), True, False) == 0
    a, b = read_csv(tmp_path / "straight" / "log.csv"), read_csv(tmp_path / "split" / "log.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [str(i) for i in range(1, 21)]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    walls = [float(r["wall_s"]) for r in b]  # training time adds up over the two sessions
    assert walls == sorted(walls)
    assert read_csv(tmp_path / "straight" / "val.csv") == read_csv(tmp_path / "split" / "val.csv")
    ta, _, _ = read_policy_checkpoint(tmp_path / "straight")
    tb, _, _ = read_policy_checkpoint(tmp_path / "split")
    for k in ta:
        if k.startswith("model/"):
            assert torch.equal(ta[k], tb[k]), k
    assert straight["rows"][0]["val_mse"] == json.loads((tmp_path / "split" / "report.json").read_text())[
        "rows"][0]["val_mse"]


def test_teacher_student_pipeline_with_rollout_hook(lift_file, tmp_path, monkeypatch, capsys):
    teacher = tmp_path / "teacher"
    assert run_from_cli("imitation/edm_lift", [f"task.dataset_path={lift_file}", *TINY, "training.steps=10",
                                               "training.val_every=0"], str(teacher), False, False) == 0
    calls = []

    def fake_rollouts(policy, n_episodes, seed):
        calls.append((policy.inference_setting(), n_episodes, seed, policy.training))
        assert PolicyWrapper(policy).get_action({k: v[0, 0] for k, v in raw_obs().items()}).shape == (7,)
        return {"success_rate": 0.5, "success_se": 0.25, "n_episodes": n_episodes}

    cfg = load_imitation_config("imitation/ctmp_lift", [
        f"task.dataset_path={lift_file}", *TINY, "training.steps=8", "training.val_every=4",
        f"policy.teacher_path={teacher}", f"policy.edm={teacher}", "training.online_rollouts=true",
        "training.rollout_every=4", "training.rollout_episodes=2", "training.eval_episodes=3"])
    report = train_imitation(cfg, run_dir=tmp_path / "student", progress=False, evaluate=fake_rollouts,
                             log=lambda *_: None)
    assert [r["setting"] for r in report["rows"]] == ["1-step", "chain [0, 2, 4]"]
    assert [r["nfe"] for r in report["rows"]] == [1, 3]
    assert all(r["success_rate"] == 0.5 and r["episodes"] == 3 for r in report["rows"])
    assert [c[1] for c in calls] == [2, 2, 3, 3] and not any(c[3] for c in calls)  # rollouts in eval mode
    val = read_csv(tmp_path / "student" / "val.csv")
    assert [r["success_rate"] for r in val] == ["0.5", "0.5"]
    assert "success (mean ± SE)" in (tmp_path / "student" / "report.md").read_text()

    student = get_policy(tmp_path / "student", cfg={"policy.chaining_times": [0, 3]}, device="cpu")
    assert student.kind == "ctm" and student.teacher is None
    # the student uses the teacher's normalizer, and deploys with chaining
    teacher_policy = get_policy(teacher, device="cpu")
    for k in ("action", "object"):
        np.testing.assert_array_equal(student.normalizer[k].min, teacher_policy.normalizer[k].min)
    pw = PolicyWrapper(student).enable_chaining()
    assert student.chaining and student.nfe() == 2
    assert pw.get_action({k: v[0, 0] for k, v in raw_obs().items()}).shape == (7,)

    # evaluating the finished runs again (`cleandiffuser eval RUN_DIR`), with a fake evaluator
    def fake_eval(policy, n_episodes, seed):
        calls.append((policy.inference_setting(), n_episodes, seed, policy.training))
        return {"success_rate": 1 / 3 if seed == 0 else 2 / 3, "success_se": 0.1, "n_episodes": n_episodes}

    calls.clear()
    rep = evaluate_run_imitation(tmp_path / "student", ["policy.chaining_times=[0,3]"], episodes=3, seeds=[0, 1],
                                 chaining="both", device="cpu", latency_repeats=1, evaluate=fake_eval,
                                 say=lambda *_: None)
    assert [(r["setting"], r["nfe"]) for r in rep["rows"]] == [("1-step", 1), ("chain [0, 3]", 2)]
    assert calls == [("1-step", 3, 0, False), ("1-step", 3, 1, False), ("chain [0, 3]", 3, 0, False),
                     ("chain [0, 3]", 3, 1, False)]
    for r in rep["rows"]:  # pooled over the seeds' episodes
        assert r["episodes"] == 6 and r["success_rate"] == pytest.approx(0.5)
        assert r["success_se"] == pytest.approx((0.25 / 6) ** 0.5) and r["ms_per_chunk"] > 0
        assert [s["seed"] for s in r["per_seed"]] == [0, 1]
    out = tmp_path / "student" / "eval" / "step_00000008"
    assert json.loads((out / "report.json").read_text())["rows"][1]["setting"] == "chain [0, 3]"
    assert "| chain [0, 3] | 2 | 0.500 ± 0.204 |" in (out / "report.md").read_text()

    # the CLI dispatches on the run's config (a `policy` section); the environment's evaluator is replaced
    monkeypatch.setattr("cleandiffuser.imitation.evaluate.make_evaluator", lambda cfg, env_args=None, n_envs=None: fake_eval)
    assert is_imitation_target(teacher) and is_imitation_target(teacher / "checkpoints" / "latest.ckpt")
    assert not is_imitation_target(tmp_path)
    capsys.readouterr()
    assert cli_main(["eval", str(tmp_path / "student"), "--chaining", "--episodes", "2", "--device", "cpu",
                     "policy.chaining_times=[0,2,4]"]) == 0
    printed = capsys.readouterr().out
    assert "| chain [0, 2, 4] | 3 | 0.667 ± 0.333 |" in printed and "report:" in printed
    assert cli_main(["eval", str(teacher), "--sample-steps", "3", "4", "--episodes", "0", "--device", "cpu"]) == 0
    rows = json.loads((teacher / "eval" / "step_00000010" / "report.json").read_text())["rows"]
    assert [(r["setting"], r["nfe"]) for r in rows] == [("heun bins=3", 5), ("heun bins=4", 7)]
    assert "success_rate" not in rows[0]  # episodes=0: latency only, no environment needed
    assert cli_main(["eval", str(teacher), "--chaining", "--device", "cpu"]) == 2
    assert "chaining is for consistency" in capsys.readouterr().err


def test_bad_configs_give_clear_errors(lift_file, tmp_path, capsys):
    def err(name, overrides, run_dir=None, resume=False):
        assert run_from_cli(name, overrides, str(run_dir or tmp_path / "bad"), resume, False) == 2
        return capsys.readouterr().err

    assert "task.dataset_path is required" in err("imitation/edm_lift", [])
    assert "unknown key 'policy.binz'" in err("imitation/edm_lift", [f"task.dataset_path={lift_file}", "policy.binz=3"])
    assert "not found" in err("imitation/edm_lift", ["task.dataset_path=/nonexistent/lift.hdf5"])
    assert "policy.kind='flow'" in err("imitation/edm_lift", [f"task.dataset_path={lift_file}", "policy.kind=flow"])
    assert "policy.teacher_path" in err("imitation/ctmp_lift", [f"task.dataset_path={lift_file}"])
    assert "not found" in err("imitation/ctmp_lift", [f"task.dataset_path={lift_file}",
                                                      "policy.teacher_path=/nonexistent/teacher.ckpt"])
    msg = err("imitation/edm_lift", [f"task.dataset_path={lift_file}", "shape_meta.obs.object.shape=[7]"])
    assert "shape_meta.obs.object.shape is [7]" in msg and "(10,)" in msg
    assert "divisible" in err("imitation/edm_lift", [f"task.dataset_path={lift_file}", "horizon=10"])
    assert "chaining_times" in err("imitation/ctmp_lift", [f"task.dataset_path={lift_file}", "policy.teacher_path=x",
                                                           "policy.chaining_times=[0,100]"])
    assert "unknown config" in err("imitation/nope", [])
    assert "cannot resume" in err(None, [], tmp_path / "missing", resume=True)
    with pytest.raises(ConfigError, match="inference_mode"):
        cfg = load_imitation_config("imitation/edm_lift", [f"task.dataset_path={lift_file}",
                                                           "training.inference_mode=true"])
        train_imitation(cfg, run_dir=tmp_path / "x", progress=False)
    # a student whose architecture differs from its teacher's
    teacher = tmp_path / "t"
    assert run_from_cli("imitation/edm_lift", [f"task.dataset_path={lift_file}", *TINY, "training.steps=2",
                                               "training.val_every=0", "training.latency_repeats=0"],
                        str(teacher), False, False) == 0
    capsys.readouterr()
    assert "already holds a run" in err("imitation/edm_lift", [f"task.dataset_path={lift_file}", *TINY], teacher)
    msg = err("imitation/ctmp_lift", [f"task.dataset_path={lift_file}", *TINY, "policy.diffusion_step_embed_dim=32",
                                      f"policy.teacher_path={teacher}"])
    assert "diffusion_step_embed_dim" in msg and "share the architecture" in msg


IMAGE_KEYS = ("agentview_image", "robot0_eye_in_hand_image")  # what robosuite_demos --images writes


def test_image_lift_configs_teacher_student_baseline_and_get_policy(tmp_path):
    """The *_lift_image configs on a robomimic file with two 84x84 cameras: the teacher trains, the student
    distils from it keeping its encoder, the baseline inherits the same observations, and the deployed
    policies take raw uint8 HWC frames."""
    rng = np.random.default_rng(0)
    demos = []
    for _ in range(4):
        obs = {k: rng.integers(0, 256, size=(20, 84, 84, 3), dtype=np.uint8) for k in IMAGE_KEYS}
        obs |= {k: rng.normal(size=(20, KEYS[k])) for k in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")}
        demos.append({"obs": obs, "actions": rng.uniform(-1, 1, size=(20, 7)), "states": np.zeros((20, 3)),
                      "rewards": np.zeros(20), "dones": np.zeros(20)})
    path = tmp_path / "lift_image.hdf5"
    write_robomimic_hdf5(path, demos, {"env_name": "Lift", "type": 1, "env_kwargs": {}})
    small = [f"task.dataset_path={path}", *TINY, "policy.obs_encoder.resnet_width=0.125",
             "policy.obs_encoder.num_kp=4", "training.steps=2", "training.val_every=0", "training.latency_repeats=1"]
    teacher = tmp_path / "teacher"
    assert run_from_cli("imitation/edm_lift_image", small, str(teacher), False, False) == 0
    cfg = load_imitation_config("imitation/ctmp_lift_image", [*small, f"policy.teacher_path={teacher}",
                                                              f"policy.edm={teacher}"])
    assert cfg.policy.kind == "ctm" and list(cfg.shape_meta.obs)[:2] == list(IMAGE_KEYS)
    train_imitation(cfg, run_dir=tmp_path / "student", progress=False, log=lambda *_: None)
    ddim = load_imitation_config("imitation/ddim_lift_image", small)
    assert ddim.policy.kind == "ddim" and ddim.shape_meta == cfg.shape_meta

    t, s = get_policy(teacher, device="cpu"), get_policy(tmp_path / "student", device="cpu")
    assert t.rgb_keys == s.rgb_keys == list(IMAGE_KEYS) and "object" not in t.obs_keys
    enc_t = t.model.model_ema["condition"].state_dict()  # the student starts from the teacher's EMA weights
    for net in (s.model.model, s.model.model_ema):  # and keeps that encoder frozen
        enc_s = net["condition"].state_dict()
        assert all(torch.equal(enc_t[k], enc_s[k]) for k in enc_t)
    frame = {k: v[:2][None] for k, v in demos[0]["obs"].items()}
    assert s.predict_action(frame)["action"].shape == (1, 4, 7)
    assert t.predict_action(frame)["action"].shape == (1, 4, 7)


def test_zarr_replay_data_and_cli_dispatch_helpers(lift_file, tmp_path):
    pytest.importorskip("zarr")
    from cleandiffuser.dataset import read_robomimic_hdf5, write_zarr_replay
    episodes = [{**ep["obs"], "action": ep["actions"]} for ep in read_robomimic_hdf5(lift_file).episodes]
    zpath = write_zarr_replay(tmp_path / "lift.zarr", episodes)
    cfg = load_imitation_config("imitation/edm_lift", [f"task.dataset_path={zpath}", *TINY])
    data = load_imitation_data(cfg)
    ref = load_imitation_data(load_imitation_config("imitation/edm_lift", [f"task.dataset_path={lift_file}", *TINY]))
    assert data.env_args is None and ref.env_args["env_name"] == "Lift"
    assert (data.n_train_episodes, data.n_val_episodes) == (6, 2) and len(data.train) == len(ref.train)
    a, b = data.train.gather(list(range(5))), ref.train.gather(list(range(5)))
    torch.testing.assert_close(a["action"], b["action"])
    torch.testing.assert_close(a["obs"]["object"], b["obs"]["object"])

    assert is_imitation_config("imitation/ctmp_lift") and not is_imitation_config("idql")
    assert not is_imitation_config("imitation/nope")
    run = tmp_path / "run"
    assert run_from_cli("imitation/edm_lift", [f"task.dataset_path={zpath}", *TINY, "training.steps=2",
                                               "training.latency_repeats=0"], str(run), False, False) == 0
    assert is_imitation_run(run) and not is_imitation_run(tmp_path)


def test_pusht_configs_transformer_backbone_and_real_short_rollouts(tmp_path, capsys):
    """imitation/edm_pusht with the transformer backbone on a tiny fake Push-T zarr; rollouts in gym-pusht
    (a few steps each) during and after training and through `cleandiffuser eval`."""
    pytest.importorskip("zarr")
    pytest.importorskip("gym_pusht")
    from cleandiffuser.dataset import write_zarr_replay
    rng = np.random.default_rng(0)
    episodes = [{"state": rng.uniform(50, 450, size=(24, 5)).astype(np.float32),
                 "action": rng.uniform(50, 450, size=(24, 2)).astype(np.float32)} for _ in range(4)]
    zpath = write_zarr_replay(tmp_path / "pusht.zarr", episodes)
    tiny = [o for o in TINY if not o.startswith("policy.")] + [
        "policy.backbone=transformer", "policy.transformer.n_layer=1", "policy.transformer.n_head=2",
        "policy.transformer.n_emb=16", "policy.noise_scheduler.bins=3"]
    run = tmp_path / "edm_pusht"
    assert run_from_cli("imitation/edm_pusht", [f"task.dataset_path={zpath}", *tiny, "training.steps=4",
                                                "training.val_every=2", "training.online_rollouts=true",
                                                "training.rollout_every=4", "training.rollout_episodes=1",
                                                "training.eval_episodes=2", "task.rollout_horizon=5"],
                        str(run), False, False) == 0
    assert "max coverage (mean ± SE)" in capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    assert report["env"] == "pusht" and report["backbone"] == "transformer"
    (row,) = report["rows"]
    assert row["episodes"] == 2 and 0 <= row["success_rate"] <= 1 and 0 <= row["mean_max_coverage"] <= 1
    val = read_csv(run / "val.csv")
    assert val[-1]["episodes"] == "1" and float(val[-1]["mean_max_coverage"]) >= 0

    assert cli_main(["eval", str(run), "--episodes", "1", "--seeds", "0", "1", "--device", "cpu",
                     "policy.noise_scheduler.bins=2"]) == 0
    printed = capsys.readouterr().out
    assert "max coverage" in printed and "| heun bins=2 | 3 |" in printed
    (row,) = json.loads((run / "eval" / "step_00000004" / "report.json").read_text())["rows"]
    assert row["episodes"] == 2 and len(row["per_seed"]) == 2 and "max_coverage_se" in row
    # --n-envs: environments stepped in lockstep (a deterministic policy's episodes do not depend on it)
    assert cli_main(["eval", str(run), "--episodes", "2", "--n-envs", "2", "--device", "cpu"]) == 0
    assert json.loads((run / "eval" / "step_00000004" / "report.json").read_text())["n_envs"] == 2
    assert cli_main(["eval", str(run), "--episodes", "2", "--n-envs", "0", "--device", "cpu"]) == 2
    assert "n_envs" in capsys.readouterr().err
    # --video: each row's first rollout (first seed) rendered beside the report
    assert cli_main(["eval", str(run), "--episodes", "1", "--seeds", "3", "4", "--device", "cpu", "--video"]) == 0
    assert "video (heun bins=3): " in capsys.readouterr().out
    (row,) = json.loads((run / "eval" / "step_00000004" / "report.json").read_text())["rows"]
    assert Path(row["video"]).parent == run / "eval" / "step_00000004" and "video" not in row["per_seed"][0]
    frames = read_video(row["video"])
    assert frames.shape == (6, 256, 256, 3)  # the start and 5 steps (task.rollout_horizon=5)
    assert cli_main(["eval", str(run), "--episodes", "0", "--device", "cpu", "--video"]) == 2
    assert "video needs rollouts" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs"):  # Push-T gives state / agent_pos observations only
        policy = get_policy(run, device="cpu")
        policy.obs_keys = ["keypoint"]
        from cleandiffuser.imitation import pusht_evaluator
        pusht_evaluator(5)(policy, 1, 0)


def test_split_seed_keeps_a_students_held_out_episodes_its_teachers(lift_file):
    """A student trained at another seed validates on the episodes its teacher held out (task.split_seed), so
    their validation MSEs compare; another split_seed holds out other episodes."""
    def held_out(config, *overrides):
        data = load_imitation_data(load_imitation_config(config, [f"task.dataset_path={lift_file}", *TINY,
                                                                  "policy.teacher_path=unused", *overrides]))
        return data.val.gather(list(range(len(data.val))))["action"]

    teacher = held_out("imitation/edm_lift", "seed=0")
    torch.testing.assert_close(held_out("imitation/ctmp_lift", "seed=1"), teacher)
    moved = [held_out("imitation/edm_lift", "seed=0", f"task.split_seed={s}") for s in (1, 2, 3)]
    assert any(m.shape != teacher.shape or not torch.equal(m, teacher) for m in moved)
