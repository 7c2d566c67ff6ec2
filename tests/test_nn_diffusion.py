"""Behaviour tests for the denoiser backbones (small models, CPU, a few seconds each)."""
import pytest
import torch

from cleandiffuser.nn_diffusion import (BaseNNDiffusion, ChiTransformer, ChiUNet1d, DiT1d, DQLMlp,
                                        IDQLMlp, JannerUNet1d, PearceMlp, PearceTransformer,
                                        SfBCUNet)
from cleandiffuser.nn_diffusion.embeddings import EMBEDDING_TYPES, NoiseEmbedding

B = 8
# name: (factory, x shape without batch, condition shape without batch)
SPECS = {
    "idql": (lambda: IDQLMlp(5, 3, emb_dim=16, hidden_dim=32, n_blocks=2, dropout=0.0), (3,), (5,)),
    "dql": (lambda: DQLMlp(5, 3, emb_dim=16, hidden_dim=32), (3,), (5,)),
    "dql_untrainable": (lambda: DQLMlp(5, 3, emb_dim=16, hidden_dim=32,
                                       timestep_emb_type="untrainable_positional"), (3,), (5,)),
    "pearce_mlp": (lambda: PearceMlp(3, To=2, emb_dim=16, hidden_dim=32), (3,), (2, 16)),
    "pearce_transformer": (lambda: PearceTransformer(3, To=2, emb_dim=16, trans_emb_dim=16, nhead=4),
                           (3,), (2, 16)),
    "dit": (lambda: DiT1d(3, 16, d_model=32, n_heads=4, depth=2), (6, 3), (16,)),
    "chiunet": (lambda: ChiUNet1d(3, 5, 2, model_dim=16, emb_dim=16, dim_mult=(1, 2)), (8, 3), (2, 5)),
    "chitransformer": (lambda: ChiTransformer(3, 5, Ta=8, To=2, d_model=32, nhead=4, num_layers=2,
                                              p_drop_attn=0.0), (8, 3), (2, 5)),
    "janner": (lambda: JannerUNet1d(3, model_dim=16, emb_dim=16, dim_mult=(1, 2)), (8, 3), (16,)),
    "sfbc": (lambda: SfBCUNet(3, emb_dim=16, hidden_dims=(32, 16)), (3,), (16,)),
}
NAMES = list(SPECS)
ZERO_INIT = {"dit"}  # adaLN-Zero: some gradients are exactly zero at the first step


def make(name, batch=B, seed=0):
    torch.manual_seed(seed)
    factory, xs, cs = SPECS[name]
    model = factory()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *xs, generator=g)
    noise = torch.rand(batch, generator=g) * 1000
    cond = torch.randn(batch, *cs, generator=g)
    return model, x, noise, cond


def perturb(model, scale=0.05):
    """Move every parameter off its init so zero-initialized layers pass signal."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("name", NAMES)
def test_shape_finite_with_and_without_condition(name):
    model, x, noise, cond = make(name)
    assert isinstance(model, BaseNNDiffusion)
    for c in (cond, None):
        y = model(x, noise, c)
        assert y.shape == x.shape
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    model, x, noise, cond = make(name)
    loss = (model(x, noise, cond) - torch.randn_like(x)).pow(2).mean()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if name not in ZERO_INIT:
            assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"


@pytest.mark.parametrize("name", NAMES)
def test_output_depends_on_noise_and_condition(name):
    model, x, noise, cond = make(name)
    perturb(model)
    model.eval()
    with torch.no_grad():
        y = model(x, noise, cond)
        assert not torch.allclose(y, model(x, noise.flip(0), cond), atol=1e-5)
        assert not torch.allclose(y, model(x, noise, torch.randn_like(cond)), atol=1e-5)
        assert not torch.allclose(y, model(x, noise, None), atol=1e-5)
        assert not torch.allclose(y, model(x + 0.5, noise, cond), atol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "chitransformer"])
def test_none_condition_is_the_zero_condition(name):
    # The null embedding of classifier-free guidance is zeros; None must mean the same.
    model, x, noise, cond = make(name)
    perturb(model)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, noise, None), model(x, noise, torch.zeros_like(cond)))


def test_chitransformer_none_condition_uses_only_time_token():
    model, x, noise, cond = make("chitransformer")
    model.eval()
    with torch.no_grad():
        y_none = model(x, noise, None)
        assert not torch.allclose(y_none, model(x, noise, torch.zeros_like(cond)), atol=1e-5)
        assert not torch.allclose(y_none, model(x, noise.flip(0), None), atol=1e-5)


def _target(x, noise, cond):
    """A fixed smooth function of (x, noise, condition), shaped like x."""
    g = torch.Generator().manual_seed(123)
    proj = torch.randn(cond[0].numel(), x[0].numel(), generator=g) / cond[0].numel() ** 0.5
    t = torch.sin(noise / 150).view(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(x) + 0.5 * t + 0.5 * torch.tanh(cond.flatten(1) @ proj).view_as(x)


@pytest.mark.parametrize("name", NAMES)
def test_fits_a_tiny_regression(name):
    model, x, noise, cond = make(name, batch=16)
    target = _target(x, noise, cond)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (model(x, noise, cond) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < losses[0] / 10, (losses[0], losses[-10:])


@pytest.mark.parametrize("name", NAMES)
def test_target_time_starts_equal_then_moves(name):
    model, x, noise, cond = make(name)
    perturb(model)  # so that zero-init output layers pass gradient to the projection
    model.eval()
    with torch.no_grad():
        y = model(x, noise, cond)
    model.enable_target_time()
    both = torch.stack([noise, noise * 0.3], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, both, cond), y)
    proj = model.map_noise.target_proj
    opt = torch.optim.Adam(proj.parameters(), lr=1e-2)
    (model(x, both, cond) - torch.randn_like(x)).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        y2 = model(x, both, cond)
        assert not torch.allclose(y2, y, atol=1e-5)
        # the target time now matters
        assert not torch.allclose(y2, model(x, torch.stack([noise, noise * 0.7], 1), cond), atol=1e-5)


@pytest.mark.parametrize("kind", EMBEDDING_TYPES)
def test_integer_noise_steps_get_distinct_embeddings(kind):
    emb = NoiseEmbedding(kind, 16)
    steps = torch.arange(1000)
    with torch.no_grad():
        e = emb(steps.float())
        torch.testing.assert_close(emb(steps), e)  # integer dtype is not truncated or rejected
    gap = (e[1:] - e[:-1]).abs().amax(1)
    assert (gap > 1e-4).all(), gap.min()


@pytest.mark.parametrize("name", NAMES)
def test_neighbouring_integer_steps_give_different_outputs(name):
    model, x, _, cond = make(name)
    perturb(model)
    model.eval()
    x = x[:1].expand(6, *x.shape[1:])
    cond = cond[:1].expand(6, *cond.shape[1:])
    with torch.no_grad():
        y = model(x, torch.arange(500, 506).float(), cond).flatten(1)
    assert ((y[1:] - y[:-1]).abs().amax(1) > 1e-6).all()


def test_unets_reject_bad_horizon():
    janner = JannerUNet1d(3, model_dim=8, emb_dim=16, dim_mult=(1, 2, 2, 2))
    janner(torch.randn(2, 16, 3), torch.rand(2))
    with pytest.raises(ValueError, match="horizon=12"):
        janner(torch.randn(2, 12, 3), torch.rand(2))
    chi = ChiUNet1d(3, 5, 2, model_dim=16, emb_dim=16)  # dim_mult (1, 2, 2): multiples of 4
    assert chi(torch.randn(2, 16, 3), torch.rand(2)).shape == (2, 16, 3)
    assert chi(torch.randn(2, 12, 3), torch.rand(2)).shape == (2, 12, 3)
    with pytest.raises(ValueError, match="horizon=10"):
        chi(torch.randn(2, 10, 3), torch.rand(2))
    trans = ChiTransformer(3, 5, Ta=8, To=2, d_model=32, num_layers=1)
    with pytest.raises(ValueError, match="horizon=9"):
        trans(torch.randn(2, 9, 3), torch.rand(2))


def test_chiunet_condition_layouts_and_errors():
    model, x, noise, cond = make("chiunet")
    model.eval()
    with torch.no_grad():
        y = model(x, noise, cond)
        torch.testing.assert_close(model(x, noise, cond.flatten(1)), y)
        with pytest.raises(ValueError, match="To \\* obs_dim = 10"):
            model(x, noise, torch.randn(B, 7))
    inpaint = ChiUNet1d(3, 5, 2, model_dim=16, emb_dim=16, dim_mult=(1, 2), obs_as_global_cond=False)
    xo = torch.randn(B, 8, 3 + 5)
    assert inpaint(xo, noise).shape == xo.shape
    with pytest.raises(ValueError, match="condition must be None"):
        inpaint(xo, noise, cond)


def test_chiunet_dropout_is_active_in_training():
    torch.manual_seed(0)
    model = ChiUNet1d(3, 5, 2, model_dim=16, emb_dim=16, dim_mult=(1, 2), dropout=0.2)
    x, noise, cond = torch.randn(4, 8, 3), torch.rand(4) * 1000, torch.randn(4, 2, 5)
    assert not torch.allclose(model(x, noise, cond), model(x, noise, cond))
    model.eval()
    torch.testing.assert_close(model(x, noise, cond), model(x, noise, cond))


@pytest.mark.parametrize("name", ["pearce_mlp", "pearce_transformer", "chitransformer"])
def test_flat_and_stacked_condition_agree(name):
    model, x, noise, cond = make(name)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, noise, cond.flatten(1)), model(x, noise, cond))


def test_dit_is_zero_at_init():
    model, x, noise, cond = make("dit")
    assert torch.equal(model(x, noise, cond), torch.zeros_like(x))


def test_dql_time_mlp_only_for_untrainable_embedding():
    assert not list(DQLMlp(5, 3).time_mlp.parameters())
    assert list(DQLMlp(5, 3, timestep_emb_type="untrainable_fourier").time_mlp.parameters())


def test_idqlmlp_dropout_and_layout():
    torch.manual_seed(0)
    model = IDQLMlp(17, 6)
    assert model.inp.in_features == 6 + 64 + 17 and len(model.blocks) == 3
    x, noise, cond = torch.randn(4, 6), torch.rand(4) * 1000, torch.randn(4, 17)
    assert not torch.allclose(model(x, noise, cond), model(x, noise, cond))  # dropout 0.1
    model.eval()
    torch.testing.assert_close(model(x[:1], noise[:1], cond[:1]), model(x, noise, cond)[:1])


def test_idqlmlp_output_layer_reads_the_residual_stream_with_or_without_mish():
    """out_activation=True (IDQL's layout) reads Mish(h); False (the public CleanDiffuser IDQLMlp) reads h itself.
    Same parameters either way, so a checkpoint loads into both."""
    torch.manual_seed(0)
    with_mish = IDQLMlp(3, 2).eval()
    plain = IDQLMlp(3, 2, out_activation=False).eval()
    plain.load_state_dict(with_mish.state_dict())
    x, noise, cond = torch.randn(5, 2), torch.rand(5), torch.randn(5, 3)
    h = with_mish.inp(torch.cat([x, with_mish.time_mlp(with_mish.map_noise(noise)), cond], -1))
    for block in with_mish.blocks:
        h = block(h)
    torch.testing.assert_close(with_mish(x, noise, cond), with_mish.out(torch.nn.functional.mish(h)))
    torch.testing.assert_close(plain(x, noise, cond), with_mish.out(h))
    assert not torch.allclose(plain(x, noise, cond), with_mish(x, noise, cond))
