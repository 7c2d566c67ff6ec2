"""The fast CPU paths of the 1-D convolutions (batch-1 acting, bf16 training) give the stock modules' results."""
import pytest
import torch
import torch.nn.functional as F

from cleandiffuser.nn_diffusion import ChiUNet1d
from cleandiffuser.nn_diffusion.conv import Conv1d, ConvTranspose1d, GemmConv1d


@pytest.mark.parametrize("cls,stock,kw", [
    (Conv1d, torch.nn.Conv1d, dict(kernel_size=5, padding=2)),
    (Conv1d, torch.nn.Conv1d, dict(kernel_size=3, stride=2, padding=1)),
    (Conv1d, torch.nn.Conv1d, dict(kernel_size=1)),
    (ConvTranspose1d, torch.nn.ConvTranspose1d, dict(kernel_size=4, stride=2, padding=1)),
])
def test_fast_path_matches_the_stock_module_and_follows_weight_updates(cls, stock, kw):
    torch.manual_seed(0)
    ref = stock(128, 96, **kw)
    fast = cls(128, 96, **kw)
    fast.load_state_dict(ref.state_dict())
    for batch in (1, 3):  # batch 1 takes the fast path, batch 3 the stock one
        x = torch.randn(batch, 128, 8)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-5)
    x = torch.randn(1, 128, 8)
    with torch.no_grad():
        fast(x)  # caches the 2-D weight
        for m in (fast, ref):  # an in-place update (optimizer, EMA, load_state_dict) must not leave it stale
            m.weight.mul_(0.5)
        torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-5)
    y = fast(x.requires_grad_())  # with gradients: the stock path, which backpropagates
    y.sum().backward()
    assert x.grad is not None and fast.weight.grad is not None


def test_unet_acts_the_same_on_the_fast_path():
    torch.manual_seed(0)
    net = ChiUNet1d(7, 4, 2, model_dim=64, emb_dim=32, dim_mult=(1, 2, 4)).eval()  # widths 64, 128, 256
    x, noise, cond = torch.randn(1, 16, 7), torch.rand(1), torch.randn(1, 2, 4)
    with torch.no_grad():
        fast = net(x, noise, cond)
    slow = net(x, noise, cond)  # grad mode: every convolution on the stock path
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel_size,bias", [(5, True), (3, False), (1, True)])
def test_gemm_conv_is_conv1d_with_its_exact_gradients(kernel_size, bias):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 8, dtype=torch.double, requires_grad=True)
    w = torch.randn(5, 6, kernel_size, dtype=torch.double, requires_grad=True)
    b = torch.randn(5, dtype=torch.double, requires_grad=True) if bias else None
    conv = lambda x, w, b: GemmConv1d.apply(x, w, b, w.detach())  # noqa: E731 (the weight in its own dtype)
    torch.testing.assert_close(conv(x, w, b), F.conv1d(x, w, b, padding=kernel_size // 2))
    assert torch.autograd.gradcheck(conv, (x, w, b))


def stock_and_fast_conv(in_ch: int, out_ch: int, k: int) -> tuple[torch.nn.Conv1d, Conv1d]:
    torch.manual_seed(0)
    ref = torch.nn.Conv1d(in_ch, out_ch, k, padding=k // 2)
    fast = Conv1d(in_ch, out_ch, k, padding=k // 2)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def test_bf16_training_path_matches_the_stock_convolution():
    ref, fast = stock_and_fast_conv(64, 32, 5)
    x = torch.randn(16, 64, 8)
    grads = []
    for m in (ref, fast):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16):
            y = m(xi)
        assert y.dtype == torch.bfloat16  # as autocast's own convolution
        (y.float() * torch.linspace(-1, 1, 8)).sum().backward()
        grads.append((y.float(), xi.grad, m.weight.grad, m.bias.grad))
    for got, want in zip(grads[1], grads[0]):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=0.05 * want.abs().max().item(), rtol=0.02)


def test_bf16_training_path_follows_weight_updates():
    ref, fast = stock_and_fast_conv(16, 8, 3)
    x = torch.randn(4, 16, 8)
    for frozen in (False, True):  # a trained weight, and a frozen teacher's (cached) weight
        for m in (ref, fast):
            m.requires_grad_(not frozen)
        for _ in range(2):
            with torch.autocast("cpu", torch.bfloat16):
                torch.testing.assert_close(fast(x), ref(x), atol=0.05, rtol=0.02)
            for m in (ref, fast):
                if frozen:  # load_state_dict, an EMA update: in place, with a version bump
                    with torch.no_grad():
                        m.weight.mul_(-0.5)
                else:  # an update through .data skips the version counter: a trained weight is never cached
                    m.weight.data.add_(1.0)


def test_bf16_training_path_trains_as_the_stock_convolution_under_fused_adamw():
    # fused AdamW updates weights without bumping their version counters: a cached cast would go stale
    ref, fast = stock_and_fast_conv(16, 8, 3)
    x, target = torch.randn(32, 16, 8), torch.randn(32, 8, 8)
    opts = [torch.optim.AdamW(m.parameters(), lr=0.05, fused=True) for m in (ref, fast)]
    for _ in range(5):
        outs = []
        for m, opt in zip((ref, fast), opts):
            with torch.autocast("cpu", torch.bfloat16):
                y = m(x)
            ((y.float() - target) ** 2).mean().backward()
            opt.step()
            opt.zero_grad()
            outs.append(y.detach().float())
        torch.testing.assert_close(outs[1], outs[0], atol=0.05, rtol=0.02)
    torch.testing.assert_close(fast.weight, ref.weight, atol=0.01, rtol=0.01)
