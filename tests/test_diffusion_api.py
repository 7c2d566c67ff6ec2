"""Checkpoints, resume, validation, curriculum, precision and differentiable sampling."""

import math

import pytest
import torch

from cleandiffuser.diffusion import (ConsistencyTrajectoryModel, ContinuousConsistencyModel, ContinuousDiffusionSDE,
                                     ContinuousEDM, DiscreteDiffusionSDE, load_model)
from cleandiffuser.nn_condition import IdentityCondition
from cleandiffuser.toy import gaussian_ring
from toy_training import FAST, score, small_net, train


def test_ct_curriculum_matches_formula():
    cm = ContinuousConsistencyModel(small_net(), s0=10, s1=1280, curriculum_cycle=8000)
    # K' = floor(8000 / (log2(128) + 1)) = 1000; N(k) = min(10 * 2^floor(k / 1000), 1280) + 1
    expected = {0: 11, 999: 11, 1000: 21, 2500: 41, 6999: 641, 7000: 1281, 10 ** 6: 1281}
    assert {k: cm.curriculum_N(k) for k in expected} == expected
    for _ in range(3):
        log = cm.update(gaussian_ring(32)[0])
    assert set(log) >= {"loss", "unweighted_loss"}
    assert cm.cur_logger.Nk == 11 and cm.cur_logger.curriculum_process == pytest.approx(3 / 8000)


def test_save_load_reproduces_samples_and_rebuilds(tmp_path):
    model = train(ContinuousEDM(small_net(), **FAST), steps=50)
    path = tmp_path / "edm.ckpt"
    model.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["edm.ckpt"]  # atomic write leaves no temp file
    with open(path, "rb") as f:
        assert b"pickle" not in f.read(64)  # safetensors header, not a pickle stream
    torch.manual_seed(1)
    a, _ = model.sample(torch.zeros(64, 2), sample_steps=5)
    fresh = ContinuousEDM(small_net(), **FAST).load(path)
    torch.manual_seed(1)
    b, _ = fresh.sample(torch.zeros(64, 2), sample_steps=5)
    rebuilt = load_model(path)
    torch.manual_seed(1)
    c, _ = rebuilt.sample(torch.zeros(64, 2), sample_steps=5)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert rebuilt.step == 50 and isinstance(rebuilt, ContinuousEDM)


@pytest.mark.parametrize("make", [
    lambda: DiscreteDiffusionSDE(small_net(), IdentityCondition(dropout=0.1), diffusion_steps=5, **FAST),
    lambda: ContinuousConsistencyModel(small_net(), IdentityCondition(dropout=0.1), curriculum_cycle=30, **FAST),
])
def test_resume_reproduces_losses(tmp_path, make):
    data = [gaussian_ring(64)[0] for _ in range(20)]
    cond = [torch.randn(64, 0) for _ in range(20)]
    torch.manual_seed(0)
    full = make()
    losses = []
    for i in range(20):
        losses.append(full.update(data[i], cond[i])["loss"])
        if i == 9:
            full.save(tmp_path / "mid.ckpt")
    torch.manual_seed(123)  # a different global state: resume must restore it
    resumed = make().load(tmp_path / "mid.ckpt", restore_rng=True)
    again = [resumed.update(data[i], cond[i])["loss"] for i in range(10, 20)]
    assert again == losses[10:]
    assert resumed.step == 20


def test_bad_arguments_raise_clear_errors(tmp_path):
    ddpm = DiscreteDiffusionSDE(small_net(), diffusion_steps=5)
    ddpm.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="solver='nope'.*ddpm"):
        ddpm.sample(torch.zeros(4, 2), solver="nope")
    with pytest.raises(ValueError, match=r"sample_steps=6 is out of range \[1, 5\]"):
        ddpm.sample(torch.zeros(4, 2), sample_steps=6)
    with pytest.raises(ValueError, match="prior has shape"):
        ddpm.sample(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="temperature=-1.0 must be a finite number >= 0"):
        ddpm.sample(torch.zeros(4, 2), temperature=-1.0)
    with pytest.raises(ValueError, match="condition_cfg has batch 3 but x has batch 4"):
        ddpm.sample(torch.zeros(4, 2), condition_cfg=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        ddpm.update(torch.full((4, 2), float("nan")))
    with pytest.raises(ValueError, match="condition contains NaN"):
        ddpm.update(torch.zeros(4, 2), torch.full((4, 1), float("inf")))
    with pytest.raises(ValueError, match="noise_schedule='cubic'"):
        DiscreteDiffusionSDE(small_net(), noise_schedule="cubic")
    with pytest.raises(ValueError, match="w_cg != 0 needs a classifier"):
        ddpm.sample(torch.zeros(4, 2), w_cg=1.0)
    with pytest.raises(ValueError, match="sample_step_schedule='zigzag'"):
        ddpm.sample(torch.zeros(4, 2), sample_step_schedule="zigzag")
    edm = ContinuousEDM(small_net(), sigma_max=40.0)
    cm = ContinuousConsistencyModel(small_net())
    with pytest.raises(ValueError, match="sigma_max=40.0 differs"):
        cm.prepare_distillation(edm)
    with pytest.raises(RuntimeError, match="prepare_distillation"):
        cm.update(torch.zeros(4, 2), loss_type="distillation")
    with pytest.raises(ValueError, match="loss_type='dsm'"):
        cm.update(torch.zeros(4, 2), loss_type="dsm")
    with pytest.raises(ValueError, match="networks must match"):
        cm2 = ContinuousConsistencyModel(small_net(obs_dim=3))
        cm2.prepare_distillation(ContinuousEDM(small_net()))
    ddpm.save(tmp_path / "ddpm.ckpt")
    with pytest.raises(ValueError, match="holds a DiscreteDiffusionSDE, not a ContinuousEDM"):
        ContinuousEDM(small_net()).load(tmp_path / "ddpm.ckpt")
    with pytest.raises(ValueError, match="diffusion_steps: model 10 vs checkpoint 5"):
        DiscreteDiffusionSDE(small_net(), diffusion_steps=10).load(tmp_path / "ddpm.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt is not a cleandiffuser checkpoint"):
        ddpm.load(tmp_path / "junk.ckpt")


def test_bf16_learns_as_well_as_fp32():
    scores = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = train(ContinuousEDM(small_net(), precision=precision, **FAST), steps=800)
        scores[precision] = score(model.sample(torch.zeros(2000, 2), sample_steps=20)[0])
    assert scores["bf16"]["modes"] == 8
    assert scores["bf16"]["sw"] < scores["fp32"]["sw"] + 0.015, scores


def test_auto_precision_is_bf16_only_on_fast_bf16_cpus(monkeypatch):
    import cleandiffuser.diffusion.base as base
    model = ContinuousEDM(small_net(), **FAST)
    for fast_cpu in (True, False):
        monkeypatch.setattr(base, "cpu_has_fast_bf16", lambda: fast_cpu)
        model.set_precision("auto")
        assert model.autocast_dtype == (torch.bfloat16 if fast_cpu else None)
    model.device = torch.device("cuda")  # the rule only (no GPU needed): small models are launch-bound there
    model.set_precision("auto")
    assert model.autocast_dtype is None
    model.set_precision("bf16")
    assert model.autocast_dtype is torch.bfloat16
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        model.set_precision("fp16")


def test_differentiable_sampling_reaches_the_weights():
    model = DiscreteDiffusionSDE(small_net(), diffusion_steps=5, **FAST)
    with torch.inference_mode():  # acting first fills the samplers' caches (grids, constants) ...
        model.sample(torch.zeros(8, 2), sample_steps=5, use_ema=False)
    # ... which differentiable sampling (Diffusion-QL's actor loss) then reuses with gradients
    x, _ = model.sample(torch.zeros(8, 2), sample_steps=5, use_ema=False, requires_grad=True)
    x.pow(2).sum().backward()
    grads = [p.grad for p in model.model.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    y, _ = model.sample(torch.zeros(8, 2), sample_steps=5)
    assert not y.requires_grad


def test_sample_history_ends_at_the_output():
    model = ContinuousDiffusionSDE(small_net(), **FAST)
    x, log = model.sample(torch.zeros(8, 2), solver="ode_dpmsolver++_2M", sample_steps=7, preserve_history=True)
    assert log["sample_history"].shape == (8, 8, 2)
    assert torch.equal(log["sample_history"][:, -1], x)
    ctm = ConsistencyTrajectoryModel(small_net(), bins=10)
    y, log = ctm.sample(torch.zeros(8, 2), sample_steps=2, preserve_history=True)
    assert torch.equal(log["sample_history"][:, -1], y)


def test_ctm_chaining_times_and_bins():
    ctm = ConsistencyTrajectoryModel(small_net(), bins=80)
    sig = ctm.chaining_sigmas(3)
    assert sig == ctm.chaining_sigmas(3, ["D", 27, 53])  # evenly spaced bins
    assert sig[1] == pytest.approx(ctm.grid[27].item()) and sig[1] < 15  # a level, not "sigma = 27"
    with pytest.raises(ValueError, match="chaining_times"):
        ctm.chaining_sigmas(2, [0, 80])
    with pytest.raises(ValueError, match=r"sample_steps=81 is out of range \[1, 80\]"):
        ctm.sample(torch.zeros(2, 2), sample_steps=81)


def test_sampling_without_grad_builds_no_graph():
    cm = ContinuousConsistencyModel(small_net(obs_dim=3), IdentityCondition(dropout=0.0))
    x, _ = cm.sample(torch.zeros(4, 2), condition_cfg=torch.randn(4, 3, requires_grad=True))
    assert not x.requires_grad
    with pytest.raises(ValueError, match=r"sample_steps=0 is out of range"):
        cm.sample(torch.zeros(4, 2), sample_steps=0)
    with pytest.raises(ValueError, match="temperature=nan"):
        cm.sample(torch.zeros(4, 2), temperature=float("nan"))
    ctm = ConsistencyTrajectoryModel(small_net(), bins=10)
    _, log = ctm.sample(torch.zeros(4, 2), sample_steps=2)  # default solver: chain (NFE = steps)
    assert log["nfe"] == 2


def test_ctm_teacher_solve_is_per_sample_heun_along_the_grid():
    """The CTM target's teacher solve (only the samples that still move are run) equals plain Heun steps of the
    teacher's denoiser from grid index i_from to min(i_to, i_from + ode_steps_max), one sample at a time."""
    torch.manual_seed(0)
    edm = ContinuousEDM(small_net(obs_dim=3), IdentityCondition(dropout=0.0), sigma_min=0.002)
    ctm = ConsistencyTrajectoryModel(small_net(obs_dim=3), IdentityCondition(dropout=0.0), bins=12, ode_steps_max=3)
    ctm.prepare_distillation(edm)
    x, x0, obs = torch.randn(9, 2) * 5, torch.zeros(9, 2), torch.randn(9, 3)
    i_from = torch.tensor([0, 1, 3, 5, 7, 9, 11, 11, 4])
    i_to = torch.tensor([0, 4, 3, 6, 12, 12, 12, 11, 10])  # 0, 3, 0, 1, 3, 3, 1, 0 and 3 (capped) steps
    got = ctm._teacher_solve(x, i_from, i_to, x0, obs)
    net, grid = edm.model_ema, ctm.grid
    with torch.no_grad():
        for b in range(9):
            y, emb = x[b:b + 1], edm.encode_condition(net, obs[b:b + 1])
            for i in range(int(i_from[b]), min(int(i_to[b]), int(i_from[b]) + 3)):
                sa, sb = grid[i:i + 1], grid[i + 1:i + 2]
                d = (y - edm.denoise(net, y, sa, emb)) / sa
                ye = y + (sb - sa) * d
                y = y + (sb - sa) * 0.5 * (d + (ye - edm.denoise(net, ye, sb, emb)) / sb)
            torch.testing.assert_close(got[b:b + 1], y, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[[0, 2, 7]], x[[0, 2, 7]])  # nothing to solve: unchanged


def test_distillation_options_change_the_target_and_distance():
    """prepare_distillation's public-style options: the EMA target network, squared L2, clipping."""
    edm = ContinuousEDM(small_net(), **FAST)
    x0 = gaussian_ring(64)[0]
    losses = {}
    for options in ({}, {"target": "ema"}, {"distance": "l2"}, {"clip": True, "teacher_solver": "euler"}):
        cm = ContinuousConsistencyModel(small_net(), **FAST).prepare_distillation(edm, distillation_N=8, **options)
        with torch.no_grad():  # make the online network differ from its EMA, so the two targets differ
            for p in cm.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        torch.manual_seed(0)
        losses[tuple(options)] = cm.update(x0, loss_type="distillation")["loss"]
    assert all(math.isfinite(v) for v in losses.values())
    assert len(set(losses.values())) == len(losses)  # each option changes the loss
    cm = ContinuousConsistencyModel(small_net(), **FAST)
    with pytest.raises(ValueError, match="target='teacher'"):
        cm.prepare_distillation(edm, target="teacher")
    with pytest.raises(ValueError, match="distance='l1'"):
        cm.prepare_distillation(edm, distance="l1")
