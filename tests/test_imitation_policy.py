"""Chunked-action policies: PolicyWrapper's (and BatchPolicyWrapper's) observation history and replanning,
the Consistency Policy student (warm start, CTM + DSM training, one-step sampling, chaining) on a small bimodal
chunk task, the transformer backbone, and get_policy checkpoints."""
import numpy as np
import pytest
import torch

from cleandiffuser.dataset import LinearNormalizer, MinMaxNormalizer
from cleandiffuser.imitation import BatchPolicyWrapper, ChunkPolicy, PolicyWrapper, get_policy, save_policy
from cleandiffuser.nn_diffusion import ChiTransformer
from cleandiffuser.runner.config import ConfigError


# --------------------------------------------------------------------------- PolicyWrapper
class FakePolicy:
    """Records what it is asked; action_pred[t] = 100 * call + t."""

    shape_meta = {"obs": {"pos": {"shape": [2], "type": "low_dim"}, "cam": {"shape": [3, 4, 5], "type": "rgb"}},
                  "action": {"shape": [1]}}
    obs_keys = ["pos", "cam"]
    n_obs_steps, horizon, n_action_steps = 3, 12, 4
    device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def predict_action(self, obs):
        self.calls.append({k: v.clone() for k, v in obs.items()})
        k = len(self.calls) - 1
        pred = (100.0 * k + torch.arange(self.horizon, dtype=torch.float32)).view(1, -1, 1)
        To = self.n_obs_steps
        return {"action_pred": pred, "action": pred[:, To - 1:To - 1 + self.n_action_steps]}

    def enable_chaining(self):
        self.chained = True


def frame(t):
    return {"pos": np.array([t, -t], dtype=np.float32), "cam": np.full((4, 5, 3), t, dtype=np.uint8),
            "unused": np.zeros(3)}


def test_policy_wrapper_history_padding_one_action_per_call_and_replanning():
    fake = FakePolicy()
    pw = PolicyWrapper(fake, n_obs=3, n_acts=4)
    To = 3
    actions = [float(pw.get_action(frame(t))[0]) for t in range(10)]
    # one action per call, taken from action_pred[To-1 : To-1+n_acts]; a new chunk every 4 calls
    assert actions == [100 * (t // 4) + To - 1 + t % 4 for t in range(10)]
    assert len(fake.calls) == pw.n_predictions == 3  # calls 0, 4 and 8
    # every call pushed its observation: the history holds the last 3 consecutive frames
    # (padded at the start by repeating the first observation)
    for call, t in zip(fake.calls, (0, 4, 8)):
        expect = [max(s, 0) for s in range(t - To + 1, t + 1)]
        assert call["pos"].shape == (1, To, 2) and call["cam"].shape == (1, To, 4, 5, 3)
        assert call["pos"][0, :, 0].tolist() == expect
        assert call["cam"][0, :, 0, 0, 0].tolist() == expect
        assert set(call) == {"pos", "cam"}  # keys come from the policy's shape_meta
    assert pw.observation_history()["pos"][:, 0].tolist() == [7, 8, 9]

    # reset clears the history and the chunk: the next call replans with a padded history
    pw.reset()
    assert pw.n_predictions == 0
    a = pw.get_action(frame(50))
    assert len(fake.calls) == 4 and float(a[0]) == 100 * 3 + To - 1
    assert fake.calls[-1]["pos"][0, :, 0].tolist() == [50, 50, 50]

    pw.enable_chaining()
    assert fake.chained


def test_policy_wrapper_checks_its_arguments():
    fake = FakePolicy()
    with pytest.raises(ValueError, match="n_obs"):
        PolicyWrapper(fake, n_obs=2)
    with pytest.raises(ValueError, match="n_acts"):
        PolicyWrapper(fake, n_acts=11)  # horizon 12 - To 3 + 1 = 10 at most
    pw = PolicyWrapper(fake, n_acts=10)
    assert pw.n_acts == 10 and pw.n_obs == 3
    with pytest.raises(KeyError, match="cam"):
        pw.get_action({"pos": np.zeros(2)})


class HistoryPolicy(FakePolicy):
    """Deterministic and batched: action_pred[b, t] = 100 * code(history of b) + t, where code packs the
    newest `pos[0]` values of the history, so an action tells which history its chunk came from."""

    def predict_action(self, obs):
        self.calls.append({k: v.clone() for k, v in obs.items()})
        h = obs["pos"][:, :, 0].to(torch.float64)  # (B, To)
        code = h @ torch.tensor([1e6, 1e3, 1.0], dtype=torch.float64)
        pred = (100.0 * code[:, None] + torch.arange(self.horizon, dtype=torch.float64))[..., None]
        return {"action_pred": pred}


def test_batch_policy_wrapper_per_slot_history_and_replanning():
    """Slots 0 and 1 start at step 0, slot 2 joins at step 2, slot 1 starts a new episode at step 6: each
    slot's history is padded at its own start and it replans after ITS n_acts=4 actions; the slots due at
    the same step share one batched call; every slot gets what a PolicyWrapper of its own would give."""
    fake = HistoryPolicy()
    bw = BatchPolicyWrapper(fake, n_envs=3, n_acts=4)
    live = {0: range(10), 1: range(10), 2: range(2, 10)}
    episode = {0: 0, 1: 0, 2: 0}
    refs = {s: PolicyWrapper(HistoryPolicy(), n_acts=4) for s in live}

    def obs(slot, t):  # pos[0] < 1000, distinct per slot, step and episode
        return frame(100 * slot + 50 * episode[slot] + t)

    for t in range(10):
        if t == 6:  # slot 1's episode ended after step 5; the next one starts here
            episode[1] = 1
            bw.reset(1)
            refs[1].reset()
        slots = [s for s in live if t in live[s]]
        actions = bw([obs(s, t) for s in slots], slots)
        assert actions.shape == (len(slots), 1)
        for s, a in zip(slots, actions):
            assert float(a[0]) == float(refs[s].get_action(obs(s, t))[0]), (t, s)
    # one call per step at which some slot replans, batching the slots due then
    assert bw.n_calls == len(fake.calls) == 5
    assert [c["pos"].shape[0] for c in fake.calls] == [2, 1, 2, 2, 1]  # steps 0 {0,1}, 2 {2}, 4 {0,1}, 6 {1,2}, 8 {0}
    hist = [c["pos"][:, :, 0].tolist() for c in fake.calls]
    assert hist[0] == [[0, 0, 0], [100, 100, 100]]  # padded by repeating each slot's first observation
    assert hist[1] == [[202, 202, 202]]  # slot 2's episode starts at step 2
    assert hist[2] == [[2, 3, 4], [102, 103, 104]]
    assert hist[3] == [[156, 156, 156], [204, 205, 206]]  # slot 1 after its reset: padded again
    assert hist[4] == [[6, 7, 8]]
    assert bw.n_predictions == [3, 1, 2]
    assert bw.observation_history(2)["pos"][:, 0].tolist() == [207, 208, 209]
    assert set(fake.calls[0]) == {"pos", "cam"} and fake.calls[0]["cam"].shape == (2, 3, 4, 5, 3)


def test_batch_policy_wrapper_checks_its_arguments():
    fake = HistoryPolicy()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_envs"):
            BatchPolicyWrapper(fake, n_envs=bad)
    with pytest.raises(ValueError, match="n_acts"):
        BatchPolicyWrapper(fake, n_envs=2, n_acts=11)
    bw = BatchPolicyWrapper(fake, n_envs=2)
    assert bw.n_obs == 3 and bw.n_acts == 4
    with pytest.raises(IndexError, match="slot 2"):
        bw([frame(0)], [2])
    with pytest.raises(ValueError, match="distinct"):
        bw([frame(0), frame(1)], [1, 1])
    with pytest.raises(ValueError, match="2 observations for 1 slots"):
        bw([frame(0), frame(1)], [0])
    with pytest.raises(KeyError, match="cam"):
        bw([{"pos": np.zeros(2)}])
    assert bw([frame(0), frame(1)]).shape == (2, 1)  # slots default to 0 .. len(obs)-1


# --------------------------------------------------------------------------- a bimodal chunk task
H, TO, TA, A = 8, 2, 4, 2
META = {"obs": {"c": {"shape": [1], "type": "low_dim"}}, "action": {"shape": [A]}}
TINY_NET = {"down_dims": [16], "diffusion_step_embed_dim": 16, "n_groups": 4, "ema_rate": 0.99}
OPT = {"lr": 2e-3, "lr_warmup_steps": 0, "lr_scheduler": "constant"}
BINS = 18


def mode_chunk(c, m):
    """The noise-free chunk of mode m in {-1, +1} for condition c: (B, H, A)."""
    t = torch.linspace(0, 1, H).view(1, H, 1)
    base = 0.6 * m.view(-1, 1, 1) + 0.25 * c.view(-1, 1, 1) * t
    return base.expand(-1, H, A) * torch.tensor([1.0, -0.5]).view(1, 1, A)


def task_batch(n, gen, p_plus=0.5):
    c = torch.rand(n, generator=gen) * 2 - 1
    m = torch.where(torch.rand(n, generator=gen) < p_plus, 1.0, -1.0)
    action = mode_chunk(c, m) + 0.03 * torch.randn(n, H, A, generator=gen)
    return {"obs": {"c": c.view(n, 1, 1).expand(n, TO, 1).contiguous()}, "action": action}


def modes_and_error(policy, n=400, seed=0):
    """Fraction of samples in the + mode and the mean squared distance to the nearest mode chunk."""
    gen = torch.Generator().manual_seed(123)
    c = torch.rand(n, generator=gen) * 2 - 1
    obs = {"c": c.view(n, 1, 1).expand(n, TO, 1).contiguous()}
    torch.manual_seed(seed)
    x = policy.predict_normalized(obs)
    d_plus = ((x - mode_chunk(c, torch.ones(n))) ** 2).mean((1, 2))
    d_minus = ((x - mode_chunk(c, -torch.ones(n))) ** 2).mean((1, 2))
    return float((d_plus < d_minus).float().mean()), float(torch.minimum(d_plus, d_minus).mean())


def identity_normalizer():
    ones = np.ones((2, 1)) * [[-1.0], [1.0]]
    return LinearNormalizer({"c": MinMaxNormalizer(ones), "action": MinMaxNormalizer(np.ones((2, A)) * [[-1.0], [1.0]])})


def train_edm_teacher(net: dict, steps: int) -> tuple[ChunkPolicy, list[float]]:
    """An EDM teacher with backbone settings `net` trained on the bimodal chunk task, and its losses."""
    torch.manual_seed(0)
    policy = ChunkPolicy(META, H, TO, TA, policy={"kind": "edm", **net, "noise_scheduler": {"bins": BINS}},
                         optimizer=OPT)
    policy.set_normalizer(identity_normalizer())
    gen = torch.Generator().manual_seed(1)
    losses = [policy.update(task_batch(64, gen))["loss"] for _ in range(steps)]
    return policy.eval(), losses


@pytest.fixture(scope="module")
def teacher():
    return train_edm_teacher(TINY_NET, 300)[0]


def make_student(teacher, **policy):
    cfg = {"kind": "ctm", **TINY_NET, "noise_scheduler": {"bins": BINS}, **policy}
    return ChunkPolicy(META, H, TO, TA, policy=cfg, optimizer={**OPT, "lr": 1e-3}, teacher=teacher, edm=teacher)


def fixed_losses(policy):
    """(ctm, dsm, total) loss of the student on one fixed batch with fixed noise."""
    b = task_batch(1024, torch.Generator().manual_seed(99))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        loss, log = policy.compute_loss(b)
    return log["ctm_loss"], log["dsm_loss"], float(loss)


def test_teacher_learns_both_modes(teacher):
    frac, err = modes_and_error(teacher)
    assert 0.35 < frac < 0.65, frac
    assert err < 0.02, err
    assert teacher.nfe() == 2 * BINS - 1


def assert_student_is_teacher(student, teacher, gen: torch.Generator) -> None:
    """At the warm start g(x, t, t) of the student equals the teacher's D(x, t) (EMA weights)."""
    student.eval()
    b = task_batch(16, gen)
    x = torch.randn(16, H, A, generator=gen)
    for s in (0.05, 1.0, 20.0):
        sig = torch.full((16,), s)
        with torch.no_grad():
            d = teacher.model.denoise(teacher.model.model_ema, x, sig,
                                      teacher.model.encode_condition(teacher.model.model_ema, b["obs"]))
            g = student.model.g(student.model.model_ema, x, sig, sig,
                                student.model.encode_condition(student.model.model_ema, b["obs"]))
        torch.testing.assert_close(g, d, rtol=0, atol=1e-6)


def test_ctm_student_warm_start_training_one_step_and_chaining(teacher):
    student = make_student(teacher)
    assert student.warm_started and student.teacher is teacher
    assert not any(p.requires_grad for p in student.model.model["condition"].parameters())  # encoder frozen
    # at the warm start the student IS the teacher: g(x, t, t) = D(x, t)
    gen = torch.Generator().manual_seed(5)
    assert_student_is_teacher(student, teacher, gen)

    # deliberately weak: the warm-started one-step student is one Euler step of the teacher from sigma_max,
    # which lands between the modes; chaining ([0, N/3, 2N/3] bins) recovers much of the gap
    _, err_weak = modes_and_error(student)
    student.enable_chaining()
    assert student.chaining_times == [0, 6, 12] and student.nfe() == 3
    _, err_chained = modes_and_error(student)
    student.disable_chaining()
    assert err_chained < 0.6 * err_weak, (err_weak, err_chained)

    # CTM + DSM training (alpha = beta = 1): the CTM loss falls; the DSM loss starts at the trained
    # teacher's value and must not get worse (both measured on one fixed batch with fixed noise)
    ctm0, dsm0, total0 = fixed_losses(student)
    student.train()
    logs = [student.update(task_batch(64, gen)) for _ in range(150)]
    assert all(np.isfinite(r["loss"]) and r["loss"] == pytest.approx(r["ctm_loss"] + r["dsm_loss"]) for r in logs)
    student.eval()
    ctm1, dsm1, total1 = fixed_losses(student)
    assert ctm1 < 0.95 * ctm0, (ctm0, ctm1)
    assert dsm1 < 1.05 * dsm0 and total1 < total0, (dsm0, dsm1, total0, total1)
    frac_t, err_t = modes_and_error(teacher)
    frac_s, err_s = modes_and_error(student)
    assert student.nfe() == 1
    assert abs(frac_s - frac_t) < 0.2, (frac_s, frac_t)  # both modes, in similar proportions
    assert 0.3 < frac_s < 0.7
    assert err_s < 0.3 * err_weak and err_s < 0.05, (err_s, err_weak, err_t)
    student.enable_chaining()  # and chaining still helps the trained student
    assert modes_and_error(student)[1] < err_s


def test_student_must_share_the_teacher_architecture(teacher):
    with pytest.raises(ValueError, match="diffusion_step_embed_dim"):
        make_student(teacher, diffusion_step_embed_dim=32)
    with pytest.raises(ValueError, match="teacher_path"):
        ChunkPolicy(META, H, TO, TA, policy={"kind": "ctm", **TINY_NET})
    with pytest.raises(ValueError, match="chaining_times"):
        ChunkPolicy(META, H, TO, TA, policy={"kind": "ctm", **TINY_NET, "chaining_times": [0, 90]},
                    inference_mode=True)


def test_get_policy_round_trip_and_overrides(teacher, tmp_path):
    student = make_student(teacher)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        student.update(task_batch(32, gen))
    student.eval()
    path = tmp_path / "student.ckpt"
    save_policy(path, student)
    obs = {"c": np.full((3, TO, 1), 0.3, dtype=np.float32)}

    loaded = get_policy(path, device="cpu")
    assert loaded.kind == "ctm" and loaded.inference_mode and loaded.teacher is None and not loaded.training
    assert loaded.cfg.training.inference_mode is True and loaded.cfg.training.online_rollouts is False
    for p in (student, loaded):
        torch.manual_seed(7)
        p.out = p.predict_action(obs)
    assert loaded.out["action"].shape == (3, TA, A) and loaded.out["action_pred"].shape == (3, H, A)
    torch.testing.assert_close(loaded.out["action_pred"], student.out["action_pred"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.out["action"], student.out["action_pred"][:, TO - 1:TO - 1 + TA])
    with pytest.raises(RuntimeError, match="inference mode"):
        loaded.update(task_batch(4, gen))

    # test-time settings: chaining times (bin indices), bins, as a dict or key=value strings
    chained = get_policy(path, cfg={"policy.chaining_times": [0, 5, 10, 15]})
    chained.enable_chaining()
    assert chained.chaining_times == [0, 5, 10, 15] and chained.nfe() == 4
    rebinned = get_policy(path, cfg=["policy.noise_scheduler.bins=40"])
    assert rebinned.model.bins == 40 and rebinned.enable_chaining().chaining_times == [0, 13, 27]
    with pytest.raises(ConfigError, match="valid keys"):
        get_policy(path, cfg={"policy.noise_scheduler.binz": 4})

    tpath = tmp_path / "teacher.ckpt"
    save_policy(tpath, teacher)
    fast = get_policy(tpath, cfg={"policy.noise_scheduler.bins": 5})
    assert fast.kind == "edm" and fast.nfe() == 9
    again = get_policy(tpath, cfg={"policy.noise_scheduler.bins": 5})
    torch.manual_seed(3)
    a = fast.predict_action(obs)["action"]
    torch.manual_seed(3)
    b = again.predict_action(obs)["action"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="chaining"):
        fast.enable_chaining()


def test_image_policy_trains_on_chunks_and_takes_raw_hwc_or_chw_images():
    from cleandiffuser.dataset import ChunkedDataset

    rng = np.random.default_rng(0)
    episodes = [{"obs": {"cam": rng.integers(0, 255, size=(12, 48, 44, 3), dtype=np.uint8),
                         "pos": rng.normal(size=(12, 3))}, "actions": rng.normal(size=(12, 2))} for _ in range(2)]
    meta = {"obs": {"cam": {"shape": [3, 48, 44], "type": "rgb"}, "pos": {"shape": [3], "type": "low_dim"}},
            "action": {"shape": [2]}}
    ds = ChunkedDataset(episodes, ["cam", "pos"], horizon=8, n_obs_steps=2, n_action_steps=4)
    enc = {"image_emb_dim": 8, "crop_size": [40, 40], "resnet_width": 0.125, "num_kp": 4, "mlp": [16],
           "feature_dim": 12}
    policy = ChunkPolicy(meta, 8, 2, 4, policy={"kind": "ddim", **TINY_NET, "obs_encoder": enc,
                                                "num_train_timesteps": 20, "num_inference_steps": 3})
    policy.set_normalizer(ds.normalizer)
    assert policy.model.model["condition"].out_dim == 12
    batch = ds.sampler(4, generator=0).sample()
    assert batch["obs"]["cam"].shape == (4, 2, 3, 48, 44)
    for _ in range(2):
        assert np.isfinite(policy.update(batch)["loss"])
    # training crops at random (40x40 -> 2x2 keypoint maps), evaluation at the centre
    cam = batch["obs"]["cam"]
    encoder = policy.model.model["condition"]
    with torch.no_grad():
        encoder.train()
        assert not torch.equal(encoder({"cam": cam, "pos": batch["obs"]["pos"]}),
                               encoder({"cam": cam, "pos": batch["obs"]["pos"]}))
        encoder.eval()
        torch.testing.assert_close(encoder({"cam": cam, "pos": batch["obs"]["pos"]}),
                                   encoder({"cam": cam, "pos": batch["obs"]["pos"]}))
    policy.eval()
    hwc = {"cam": episodes[0]["obs"]["cam"][None, :2], "pos": episodes[0]["obs"]["pos"][None, :2]}
    chw = {"cam": torch.as_tensor(hwc["cam"]).permute(0, 1, 4, 2, 3), "pos": hwc["pos"]}
    torch.manual_seed(0)
    a = policy.predict_action(hwc)["action"]
    torch.manual_seed(0)
    b = policy.predict_action(chw)["action"]
    assert a.shape == (1, 4, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected"):
        policy.predict_action({"cam": hwc["cam"][:, :1], "pos": hwc["pos"][:, :1]})


# --------------------------------------------------------------------------- transformer backbone
TF_NET = {"backbone": "transformer", "transformer": {"n_layer": 2, "n_head": 2, "n_emb": 32, "p_drop_attn": 0.0},
          "ema_rate": 0.99}


@pytest.fixture(scope="module")
def tf_teacher():
    """An EDM teacher with the ChiTransformer backbone on the bimodal chunk task, and its losses."""
    return train_edm_teacher(TF_NET, 200)


def test_transformer_backbone_learns_both_modes(tf_teacher):
    policy, losses = tf_teacher
    net = policy.model.model["diffusion"]
    assert isinstance(net, ChiTransformer) and net.To == TO and net.Ta == H  # one memory token per frame
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20]), (losses[:20], losses[-20:])
    frac, err = modes_and_error(policy)
    assert 0.3 < frac < 0.7, frac
    assert err < 0.1, err  # the two modes are ~0.9 apart
    out = policy.predict_action({"c": np.full((2, TO, 1), 0.3, dtype=np.float32)})
    assert out["action"].shape == (2, TA, A) and out["action_pred"].shape == (2, H, A)
    assert torch.isfinite(out["action_pred"]).all()
    # an obs-encoder MLP mixes the frames: the encoding is one observation token
    mixed = ChunkPolicy(META, H, TO, TA, policy={"kind": "ddim", **TF_NET, "obs_encoder": {"mlp": [8], "feature_dim": 6}})
    assert mixed.model.model["diffusion"].To == 1 and mixed.model.model["diffusion"].obs_dim == 6
    with pytest.raises(ValueError, match="n_head"):
        ChunkPolicy(META, H, TO, TA, policy={**TF_NET, "transformer": {"n_emb": 30, "n_head": 4}})
    with pytest.raises(ValueError, match="policy.backbone"):
        ChunkPolicy(META, H, TO, TA, policy={"backbone": "rnn"})


def test_ctm_student_warm_starts_from_a_transformer_teacher(tf_teacher, tmp_path):
    teacher, _ = tf_teacher
    # dropout is no architecture setting: the student may use its own
    tf_student = {**TF_NET, "transformer": {**TF_NET["transformer"], "p_drop_attn": 0.1}}
    student = ChunkPolicy(META, H, TO, TA, policy={"kind": "ctm", **tf_student, "noise_scheduler": {"bins": BINS}},
                          optimizer=OPT, teacher=teacher, edm=teacher)
    assert student.warm_started and isinstance(student.model.model["diffusion"], ChiTransformer)
    gen = torch.Generator().manual_seed(5)
    assert_student_is_teacher(student, teacher, gen)
    student.train()
    assert np.isfinite(student.update(task_batch(32, gen))["loss"])

    # the backbone and its sizes are part of the architecture a student shares with its teacher
    with pytest.raises(ValueError, match=r"policy.transformer.n_layer \(this 3, other 2\)"):
        ChunkPolicy(META, H, TO, TA, optimizer=OPT, teacher=teacher, edm=teacher, policy={
            "kind": "ctm", **TF_NET, "transformer": {**TF_NET["transformer"], "n_layer": 3}})
    with pytest.raises(ValueError, match="policy.backbone"):
        ChunkPolicy(META, H, TO, TA, policy={"kind": "ctm", **TINY_NET}, teacher=teacher, edm=teacher)

    # checkpoints rebuild the transformer
    student.eval()
    save_policy(tmp_path / "s.ckpt", student)
    loaded = get_policy(tmp_path / "s.ckpt", device="cpu")
    assert loaded.policy_cfg["backbone"] == "transformer" and isinstance(loaded.model.model["diffusion"],
                                                                        ChiTransformer)
    obs = {"c": np.full((2, TO, 1), -0.4, dtype=np.float32)}
    for p in (student, loaded):
        torch.manual_seed(1)
        p.out = p.predict_action(obs)["action_pred"]
    torch.testing.assert_close(loaded.out, student.out, rtol=0, atol=0)
