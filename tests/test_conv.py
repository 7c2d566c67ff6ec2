"""The fast CPU inference path of the 1-D convolutions gives the stock modules' outputs."""
import pytest
import torch

from cleandiffuser.nn_diffusion import ChiUNet1d
from cleandiffuser.nn_diffusion.conv import Conv1d, ConvTranspose1d


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
