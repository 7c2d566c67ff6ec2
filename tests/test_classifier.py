import pytest
import torch

from cleandiffuser.classifier import BaseClassifier, CumRewClassifier, MSEClassifier, QGPOClassifier
from cleandiffuser.nn_classifier import BaseNNClassifier, MLPNNClassifier




def _corr(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return (a @ b / (a.norm() * b.norm())).item()


# ---- networks -------------------------------------------------------------------------------------
def test_mlp_nn_classifier_shapes_and_condition_checks():
    net = MLPNNClassifier((3, 4), out_dim=2, emb_dim=16, hidden_dims=32)
    x, noise = torch.randn(5, 3, 4), torch.rand(5) * 1000
    assert net(x, noise).shape == (5, 2)
    assert isinstance(net, BaseNNClassifier)
    # the noise level is an input
    assert not torch.allclose(net(x, noise), net(x, noise + 300))
    with pytest.raises(ValueError):
        net(x, noise, torch.randn(5, 2))  # unconditional network given a condition
    with pytest.raises(ValueError):
        net(torch.randn(5, 13), noise)
    cnet = MLPNNClassifier(4, emb_dim=16, hidden_dims=(32, 32), cond_dim=6, timestep_emb_type="fourier")
    c = torch.randn(5, 2, 3)  # flattened to 6
    out = cnet(torch.randn(5, 4), noise, c)
    assert out.shape == (5, 1)
    with pytest.raises(ValueError):
        cnet(torch.randn(5, 4), noise)


# ---- base wrapper ---------------------------------------------------------------------------------
def test_ema_and_checkpoint(tmp_path):
    clf = CumRewClassifier(MLPNNClassifier(3, emb_dim=8, hidden_dims=16), ema_rate=1.0)
    before = [p.clone() for p in clf.model_ema.parameters()]
    x, noise, y = torch.randn(8, 3), torch.rand(8) * 1000, torch.randn(8)
    info = clf.update(x, noise, y)
    assert set(info) == {"loss"} and isinstance(info["loss"], float)
    assert all(torch.equal(a, b) for a, b in zip(before, clf.model_ema.parameters()))  # rate 1: frozen
    assert not all(torch.equal(a, b) for a, b in zip(clf.model.parameters(), clf.model_ema.parameters()))
    clf.ema_rate = 0.0
    clf.update(x, noise, y)
    assert all(torch.equal(a, b) for a, b in zip(clf.model.parameters(), clf.model_ema.parameters()))
    assert all(not p.requires_grad for p in clf.model_ema.parameters())
    clf.train()
    assert not clf.model_ema.training
    clipped = CumRewClassifier(MLPNNClassifier(3, emb_dim=8, hidden_dims=16), grad_clip_norm=0.5)
    assert "grad_norm" in clipped.update(x, noise, y * 100)

    clf.save(tmp_path / "clf.pt")
    other = CumRewClassifier(MLPNNClassifier(3, emb_dim=8, hidden_dims=16))
    other.load(tmp_path / "clf.pt")
    torch.testing.assert_close(other.logp(x, noise), clf.logp(x, noise))


def test_gradients_contract_under_no_grad():
    clf = CumRewClassifier(MLPNNClassifier((4, 3), emb_dim=8, hidden_dims=16))
    x = torch.randn(6, 4, 3)
    noise = torch.rand(6) * 1000
    with torch.no_grad():
        logp, grad = clf.gradients(x, noise, None)
    assert logp.shape == (6, 1) and grad.shape == x.shape
    assert not logp.requires_grad and not grad.requires_grad and not x.requires_grad
    # matches a finite difference of logp
    eps = 1e-3
    d = torch.randn_like(x)
    with torch.no_grad():
        fd = (clf.logp(x + eps * d, noise) - clf.logp(x - eps * d, noise)).sum() / (2 * eps)
    assert (grad * d).sum().item() == pytest.approx(fd.item(), rel=1e-2, abs=1e-4)
    # per-sample independence: grad of sum(logp) is each sample's own gradient
    _, g0 = clf.gradients(x[:1], noise[:1])
    torch.testing.assert_close(g0, grad[:1], rtol=1e-4, atol=1e-6)
    # no gradients leak into the parameters
    assert all(p.grad is None for p in clf.model_ema.parameters())


def test_base_classifier_is_abstract():
    clf = BaseClassifier(MLPNNClassifier(2, emb_dim=8, hidden_dims=8))
    with pytest.raises(NotImplementedError):
        clf.update(torch.randn(2, 2), torch.zeros(2), torch.zeros(2))
    with pytest.raises(NotImplementedError):
        clf.gradients(torch.randn(2, 2), torch.zeros(2))


# ---- regression classifiers -----------------------------------------------------------------------
W = torch.tensor([1.0, -2.0, 0.5, 1.5])


def _train_linear_target(clf, steps=400):
    losses = []
    for _ in range(steps):
        x = torch.randn(128, 4)
        losses.append(clf.update(x, torch.rand(128) * 1000, x @ W)["loss"])
    return losses


def test_cumrew_classifier_learns_and_gradient_points_along_w():
    clf = CumRewClassifier(MLPNNClassifier(4, emb_dim=16, hidden_dims=(64, 64)), ema_rate=0.9,
                           optim_params={"lr": 2e-3})
    losses = _train_linear_target(clf)
    assert sum(losses[-20:]) / 20 < 0.05 * sum(losses[:5]) / 5
    x, noise = torch.randn(256, 4), torch.rand(256) * 1000
    with torch.no_grad():
        logp, grad = clf.gradients(x, noise, torch.randn(256, 3))  # c ignored: unconditional net
    assert _corr(logp, x @ W) > 0.95
    cos = torch.nn.functional.cosine_similarity(grad, W.expand_as(grad), dim=-1)
    assert cos.mean() > 0.9


def test_cumrew_classifier_conditional_network_uses_condition():
    clf = CumRewClassifier(MLPNNClassifier(2, emb_dim=8, hidden_dims=(64, 64), cond_dim=2), ema_rate=0.9,
                           optim_params={"lr": 2e-3})
    for _ in range(300):
        x, s = torch.randn(128, 2), torch.randn(128, 2)
        clf.update(x, torch.rand(128) * 1000, (x * s).sum(-1, keepdim=True), s)  # value = x . s
    x, s = torch.randn(256, 2), torch.randn(256, 2)
    logp, grad = clf.gradients(x, torch.rand(256) * 1000, s)
    assert _corr(logp, (x * s).sum(-1)) > 0.9
    assert torch.nn.functional.cosine_similarity(grad, s, dim=-1).mean() > 0.8


def test_mse_classifier_guides_toward_target():
    clf = MSEClassifier(MLPNNClassifier(4, emb_dim=16, hidden_dims=(64, 64)), temperature=0.5, ema_rate=0.9,
                        optim_params={"lr": 2e-3})
    losses = _train_linear_target(clf)
    assert sum(losses[-20:]) / 20 < 0.05 * sum(losses[:5]) / 5
    x, noise = torch.randn(256, 4), torch.rand(256) * 1000
    target = torch.randn(256) * 3
    logp, grad = clf.gradients(x, noise, target)
    pred = clf.model_ema(x, noise)
    assert _corr(pred, x @ W) > 0.95
    torch.testing.assert_close(logp, -(pred - target[:, None]) ** 2 / 0.5)
    assert (logp <= 0).all()
    # ascending logp moves f(x) = x.w toward the target: grad ~ 2 (target - f) w / T
    away = ((target - x @ W).abs() > 0.5)
    direction = torch.sign(target - x @ W)[:, None] * W
    cos = torch.nn.functional.cosine_similarity(grad, direction, dim=-1)
    assert cos[away].mean() > 0.9
    with pytest.raises(ValueError):
        clf.logp(x, noise, None)
    with pytest.raises(ValueError):
        clf.update(x, noise, x @ W, condition=torch.randn(256, 2))


# ---- QGPO -----------------------------------------------------------------------------------------
def _qgpo_batch(b, k=16, beta=4.0):
    s = torch.rand(b, 2) * 2 - 1
    a = torch.rand(b, k, 1) * 2 - 1
    q = -2.0 * (a[..., 0] - s[:, :1]) ** 2  # best action a = s[0]
    return s, a, beta * q


def test_qgpo_softmax_matches_target_energy():
    clf = QGPOClassifier(MLPNNClassifier(1, emb_dim=16, hidden_dims=(64, 64), cond_dim=2), ema_rate=0.9,
                         optim_params={"lr": 1e-3})
    first = None
    for _ in range(400):
        s, a, e = _qgpo_batch(64)
        loss = clf.update(a, torch.zeros(64), e, s)["loss"]
        first = first if first is not None else loss
    s, a, e = _qgpo_batch(512)
    with torch.no_grad():
        f = clf.candidate_logits(a, torch.zeros(512), s, use_ema=True)
    p = torch.softmax(e, -1)
    kl = (p * (torch.log_softmax(e, -1) - torch.log_softmax(f, -1))).sum(-1).mean().item()
    kl_uniform = (p * (torch.log_softmax(e, -1) + torch.log(torch.tensor(16.0)))).sum(-1).mean().item()
    assert kl < 0.05 * kl_uniform and kl < 0.05

    # logp on single actions is f_phi; its gradient points toward the best action a* = s[0]
    act = torch.rand(512, 1) * 2 - 1
    logp, grad = clf.gradients(act, torch.zeros(512), s)
    assert logp.shape == (512, 1) and grad.shape == act.shape
    torch.testing.assert_close(logp, clf.model_ema(act, torch.zeros(512), s))
    far = (s[:, :1] - act).abs() > 0.2
    assert (torch.sign(grad) == torch.sign(s[:, :1] - act))[far].float().mean() > 0.9


def test_qgpo_loss_is_softmax_cross_entropy_and_shared_noise():
    clf = QGPOClassifier(MLPNNClassifier(3, emb_dim=8, hidden_dims=16, cond_dim=4))
    x, s, e = torch.randn(5, 6, 3), torch.randn(5, 4), torch.randn(5, 6)
    noise = torch.rand(5) * 1000
    f = clf.candidate_logits(x, noise, s)
    assert f.shape == (5, 6)
    # candidate k of sample b is scored with that sample's state and noise level
    torch.testing.assert_close(f[2, 4], clf.model(x[2, 4][None], noise[2:3], s[2:3])[0, 0])
    expected = -(torch.softmax(e, -1) * torch.log_softmax(f, -1)).sum(-1).mean()
    torch.testing.assert_close(clf.loss(x, noise, e, s), expected)
    with pytest.raises(ValueError):
        clf.loss(x, torch.rand(5, 6), e, s)
