"""The fused Mish kernel equals torch's, compiled dropout is a fair Bernoulli mask, and a compiled denoiser
(or consistency loss) trains like the eager one."""
import pytest
import torch
import torch.nn.functional as F

from cleandiffuser.diffusion import (ContinuousConsistencyModel, ContinuousEDM, ContinuousRectifiedFlow,
                                    DiscreteDiffusionSDE)
from cleandiffuser.nn_condition import IdentityCondition
from cleandiffuser.nn_diffusion import IDQLMlp
from cleandiffuser.utils import activations
from cleandiffuser.utils.activations import Mish, dropout, mish


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(256, 1024), (3, 7)], ids=["fused", "eager"])
def test_mish_matches_torch_values_and_gradients(dtype, tol, shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 4).to(dtype)
    x[0, :3] = torch.tensor([-30.0, 0.0, 30.0])  # saturated tails
    if shape == (256, 1024) and activations._kernels() is None:
        pytest.skip("no C++ compiler for the fused kernel")
    assert activations._use_fused(x) == (shape == (256, 1024))
    ours, ref = x.clone().requires_grad_(), x.double().requires_grad_()
    grad = torch.randn(shape)
    Mish()(ours).backward(grad.to(dtype))
    F.mish(ref).backward(grad.double())
    assert torch.allclose(mish(x).double(), F.mish(ref).detach(), atol=tol, rtol=tol)
    assert torch.allclose(ours.grad.double(), ref.grad, atol=tol, rtol=tol)
    if shape == (256, 1024):  # the hand-written backward is first order only, and says so
        big = x.float().requires_grad_()
        (g,) = torch.autograd.grad(mish(big).sum(), big, create_graph=True)
        with pytest.raises(RuntimeError):
            g.sum().backward()



def test_fused_mish_compiles_once_for_every_rank_grad_and_autocast_mode():
    """The activations a network makes (2-, 3-, 4-d; training and evaluation; under bf16 autocast) share one
    compiled variant of each kernel: with recompiles made errors, none of these calls may recompile."""
    if activations._kernels() is None:
        pytest.skip("no C++ compiler for the fused kernel")
    torch.manual_seed(0)
    shapes = [(64, 512), (64, 32, 16), (8, 16, 16, 16)]
    for shape in shapes:  # the first backward compiles the backward kernel; nothing after that compiles
        x = torch.randn(shape, requires_grad=True)
        mish(x).sum().backward()
        break
    with torch._dynamo.config.patch(error_on_recompile=True):
        for shape in shapes:
            x = torch.randn(shape).mul(4).requires_grad_()
            y = mish(x)
            y.backward(torch.ones_like(y))
            with torch.no_grad():
                assert torch.allclose(mish(x), F.mish(x), atol=1e-5)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.allclose(mish(x), F.mish(x), atol=1e-5)
            assert torch.allclose(x.grad, torch.autograd.functional.vjp(F.mish, x.detach(), torch.ones_like(x))[1],
                                  atol=1e-5)

def test_compiled_dropout_is_a_fresh_fair_mask_seeded_by_torch():
    drop = torch.compile(lambda x: dropout(x, 0.25), dynamic=False)
    x = torch.ones(256, 512, requires_grad=True)
    torch.manual_seed(0)
    a = drop(x)
    torch.manual_seed(0)
    assert torch.equal(drop(x), a)  # the hash's seed comes from torch's generator (seeding and resume)
    assert not torch.equal(drop(x), a)  # and a new mask on every call
    assert a.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    keep = (a != 0).float()
    assert keep.mean().item() == pytest.approx(0.75, abs=0.005)  # 131072 draws: sd 0.0012
    for pair in (keep[:, 1:] * keep[:, :-1], keep[1:] * keep[:-1]):  # neighbours are independent
        assert pair.mean().item() == pytest.approx(0.75 ** 2, abs=0.006)
    a.sum().backward()
    assert torch.equal(x.grad, a.detach())  # d/dx = mask / (1 - p)
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0) is x


def _edm(seed: int) -> ContinuousEDM:
    torch.manual_seed(seed)
    return ContinuousEDM(IDQLMlp(2, 2, hidden_dim=64, n_blocks=2, dropout=0.0), IdentityCondition(dropout=0.0),
                         x_max=torch.full((2,), 3.0), x_min=torch.full((2,), -3.0), precision="fp32",
                         optim_params={"lr": 1e-3})


def _ddpm(seed: int) -> DiscreteDiffusionSDE:
    torch.manual_seed(seed)
    return DiscreteDiffusionSDE(IDQLMlp(2, 2, hidden_dim=64, n_blocks=2, dropout=0.0), IdentityCondition(dropout=0.0),
                                diffusion_steps=5, x_max=torch.full((2,), 3.0), x_min=torch.full((2,), -3.0),
                                precision="fp32", optim_params={"lr": 1e-3})


def _rf(seed: int) -> ContinuousRectifiedFlow:
    torch.manual_seed(seed)
    return ContinuousRectifiedFlow(IDQLMlp(2, 2, hidden_dim=64, n_blocks=2, dropout=0.0),
                                   IdentityCondition(dropout=0.0), x_max=torch.full((2,), 3.0),
                                   x_min=torch.full((2,), -3.0), precision="fp32", optim_params={"lr": 1e-3})


# EDM and DDPM compile their whole loss (compiled_losses); rectified flow compiles the network module, which
# sampling must bypass
@pytest.mark.parametrize("make", [_edm, _ddpm, _rf], ids=["edm-loss", "ddpm-loss", "rf-network"])
def test_compiled_network_trains_like_eager_and_samples_eagerly(make):
    torch.manual_seed(1)
    x0, cond = torch.randn(256, 2), torch.randn(256, 2)
    eager, compiled = make(0), make(0).compile_network()
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(2)
        losses.append([model.update(x0, cond)["loss"] for _ in range(15)])
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(p, q, atol=1e-4)
    # sampling runs the network eagerly (force_eager): no compilation for new batch sizes
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    x, _ = compiled.sample(torch.zeros(1, 2), condition_cfg=cond[:1], sample_steps=4, use_ema=False)
    assert torch.isfinite(x).all()
    assert torch._dynamo.utils.counters["stats"]["calls_captured"] == 0


def test_sampling_autocasts_large_batches_only():
    """bf16 autocast pays off from 64 samples (results/bench_ops.md); one observation stays fp32."""
    model = _edm(0)
    model.set_precision("bf16")
    seen = []
    model.model_ema["diffusion"].register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    for batch, expected in ((1, False), (63, False), (64, True), (256, True)):
        seen.clear()
        x, _ = model.sample(torch.zeros(batch, 2), condition_cfg=torch.randn(batch, 2), sample_steps=2)
        assert x.dtype == torch.float32 and seen == [expected] * 2, (batch, seen)
    seen.clear()  # differentiable sampling leaves precision to the caller
    model.sample(torch.zeros(64, 2), condition_cfg=torch.randn(64, 2), sample_steps=2, requires_grad=True,
                 use_ema=True)
    assert seen == [False] * 2


@pytest.mark.parametrize("distill", [False, True], ids=["ct", "cd"])
def test_compiled_consistency_loss_trains_like_eager(distill):
    """compile_network() compiles a consistency model's whole pair loss; the noise is drawn outside it."""
    def make():
        torch.manual_seed(0)
        cm = ContinuousConsistencyModel(IDQLMlp(2, 2, hidden_dim=64, n_blocks=2, dropout=0.0),
                                        IdentityCondition(dropout=0.0), x_max=torch.full((2,), 3.0),
                                        x_min=torch.full((2,), -3.0), precision="fp32", optim_params={"lr": 1e-3})
        return cm.prepare_distillation(_edm(1), distillation_N=8) if distill else cm

    torch.manual_seed(1)
    x0, cond = torch.randn(256, 2), torch.randn(256, 2)
    kw = {"loss_type": "distillation"} if distill else {}
    eager, compiled = make(), make().compile_network()
    logs = []
    for model in (eager, compiled):
        torch.manual_seed(2)
        logs.append([model.update(x0, cond, **kw) for _ in range(10)])
    for key in ("loss", "unweighted_loss"):
        assert [log[key] for log in logs[1]] == pytest.approx([log[key] for log in logs[0]], rel=1e-3)
    for p, q in zip(eager.parameters(), compiled.parameters()):  # Adam turns rounding of ~0 gradients into
        assert (p - q).norm() <= 1e-3 * p.norm()                  # lr-sized steps on a few entries
