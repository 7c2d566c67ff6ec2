import math

import pytest
import torch
import torch.nn as nn

from cleandiffuser.nn_condition import (
    BaseNNCondition, IdentityCondition, LinearCondition, MLPCondition, MultiImageObsCondition,
    PearceObsCondition, ResNet18ImageCondition, SpatialSoftmax,
)
from cleandiffuser.nn_condition.resnet_image import _crop

TINY = dict(width=1 / 8)  # channels (8, 16, 32, 64)




def _dropped_fraction(emb: torch.Tensor) -> float:
    return (emb.flatten(1).abs().sum(1) == 0).float().mean().item()


def _binomial_ok(frac: float, p: float, n: int, z: float = 5.0) -> bool:
    return abs(frac - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-9


# ---- classifier-free-guidance dropout ------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.25, 0.6])
def test_dropout_fraction_matches_p(p):
    n = 4000
    cond = IdentityCondition(dropout=p).train()
    out = cond(torch.randn(n, 3).abs() + 0.1)  # never zero on its own
    assert _binomial_ok(_dropped_fraction(out), p, n)
    kept = out.abs().sum(1) > 0
    assert kept.any() and torch.all(out[kept] != 0)  # kept rows untouched, dropped rows fully zero


def test_dropout_eval_never_drops_and_mask_overrides():
    cond = LinearCondition(4, 6, dropout=0.5)
    x = torch.randn(500, 4)
    cond.eval()
    ref = cond.linear(x)
    torch.testing.assert_close(cond(x), ref)
    cond.train()
    torch.testing.assert_close(cond(x, mask=torch.ones(500)), ref)  # mask wins over random dropout
    mask = torch.arange(500) % 3 != 0
    out = cond(x, mask=mask)
    assert torch.all(out[~mask] == 0)
    torch.testing.assert_close(out[mask], ref[mask])
    cond.eval()  # an explicit mask still applies in eval (e.g. the unconditional CFG branch)
    assert torch.all(cond(x, mask=torch.zeros(500)) == 0)


def test_dropout_validation():
    with pytest.raises(ValueError):
        IdentityCondition(dropout=1.0)


def test_identity_any_shape():
    x = torch.randn(3, 2, 5, 7)
    assert IdentityCondition().eval()(x) is x


def test_mlp_condition_hidden_dims_int_or_sequence():
    m1 = MLPCondition(5, 7, hidden_dims=32, dropout=0.0)
    m2 = MLPCondition(5, 7, hidden_dims=(32, 16), act=nn.ReLU(), dropout=0.0)
    assert [l.out_features for l in m1.mlp if isinstance(l, nn.Linear)] == [32, 7]
    assert [l.out_features for l in m2.mlp if isinstance(l, nn.Linear)] == [32, 16, 7]
    assert sum(isinstance(l, nn.ReLU) for l in m2.mlp) == 2
    assert m2(torch.randn(4, 3, 5)).shape == (4, 3, 7)


def test_pearce_obs_condition_2d_equals_3d():
    c = PearceObsCondition(6, emb_dim=8, dropout=0.0).eval()
    x = torch.randn(5, 6)
    out2, out3 = c(x), c(x[:, None])
    assert out2.shape == (5, 1, 8)
    torch.testing.assert_close(out2, out3)
    torch.testing.assert_close(out2[:, 0], c.linear(x))
    cf = PearceObsCondition(6, emb_dim=8, flatten=True, dropout=0.0).eval()
    cf.load_state_dict(c.state_dict())
    assert cf(x).shape == (5, 8)
    seq = torch.randn(5, 3, 6)
    # per-step linear map, flattened step-major
    torch.testing.assert_close(cf(seq), c(seq).reshape(5, 24))
    torch.testing.assert_close(cf(seq)[:, 8:16], c.linear(seq[:, 1]))
    with pytest.raises(ValueError):
        c(torch.randn(5, 7))


# ---- image encoder --------------------------------------------------------------------------------
def test_crop_windows_are_valid_and_random():
    x = torch.arange(4 * 2 * 10 * 10, dtype=torch.float32).view(4, 2, 10, 10)
    center = _crop(x, (6, 6), random=False)
    torch.testing.assert_close(center, x[:, :, 2:8, 2:8])
    offsets = set()
    for _ in range(20):
        out = _crop(x, (6, 6), random=True)
        for i in range(4):
            t, l = divmod(int(out[i, 0, 0, 0].item() - x[i, 0, 0, 0].item()), 10)
            torch.testing.assert_close(out[i], x[i, :, t:t + 6, l:l + 6])
            offsets.add((t, l))
    assert len(offsets) > 5  # windows vary across samples and calls


def test_resnet_shapes_train_random_eval_deterministic():
    enc = ResNet18ImageCondition(image_sz=40, in_channel=3, emb_dim=16, crop_size=36, dropout=0.0, **TINY)
    x = torch.rand(3, 3, 40, 40) * 2 - 1
    enc.train()
    a, b = enc(x), enc(x)
    assert a.shape == (3, 16)
    assert not torch.allclose(a, b)  # different random crops
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x))
    seq = torch.rand(3, 2, 3, 40, 40) * 2 - 1
    out = enc(seq)
    assert out.shape == (3, 2, 16)
    torch.testing.assert_close(out[:, 1], enc(seq[:, 1]))  # frames encoded independently
    with pytest.raises(TypeError):
        enc((x * 127 + 128).to(torch.uint8))
    with pytest.raises(ValueError):
        enc(torch.rand(3, 3, 32, 32))  # not image_sz


def test_resnet_default_widths_and_group_norm():
    enc = ResNet18ImageCondition(emb_dim=32)
    assert enc.channels == (64, 128, 256, 512)
    norms = [m for m in enc.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels // 16 for m in norms)
    assert len([m for m in enc.modules() if type(m).__name__ == "BasicBlock"]) == 8
    n_params = sum(p.numel() for p in enc.parameters())
    assert 10e6 < n_params < 12e6  # ResNet-18 trunk (~11M)
    enc2 = ResNet18ImageCondition(emb_dim=8, channels=(4, 8, 8, 16), spatial_softmax=False, use_group_norm=False)
    assert enc2.channels == (4, 8, 8, 16)
    assert any(isinstance(m, nn.BatchNorm2d) for m in enc2.modules())


def test_spatial_softmax_follows_hot_pixel():
    ss = SpatialSoftmax(1, num_kp=1, temperature=0.02)
    with torch.no_grad():
        ss.keypoint_conv.weight.fill_(1.0)
        ss.keypoint_conv.bias.zero_()
    h, w = 7, 9
    for r, c in [(0, 0), (3, 4), (6, 8), (2, 7)]:
        feat = torch.zeros(1, 1, h, w)
        feat[0, 0, r, c] = 1.0
        kx, ky = ss(feat)[0].tolist()
        assert kx == pytest.approx(-1 + 2 * c / (w - 1), abs=1e-3)
        assert ky == pytest.approx(-1 + 2 * r / (h - 1), abs=1e-3)


def test_encoder_keypoints_in_unit_box():
    enc = ResNet18ImageCondition(image_sz=64, emb_dim=8, num_kp=5, **TINY).eval()
    kp = enc.features(torch.randn(6, 3, 64, 64) * 3)
    assert kp.shape == (6, 10)
    assert kp.abs().max() <= 1.0


def _blobs(n, size):
    pos = torch.rand(n, 2) * 1.6 - 0.8
    g = torch.linspace(-1, 1, size)
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    d2 = (gx[None] - pos[:, 0, None, None]) ** 2 + (gy[None] - pos[:, 1, None, None]) ** 2
    img = torch.exp(-d2 / (2 * 0.08 ** 2)) * 2 - 1  # [-1, 1] images, bright blob
    return img[:, None].expand(n, 3, size, size).contiguous(), pos


def test_tiny_encoder_learns_blob_position():
    enc = ResNet18ImageCondition(image_sz=64, emb_dim=2, num_kp=8, dropout=0.0, **TINY)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    for _ in range(250):
        x, y = _blobs(16, 64)
        loss = ((enc(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    x, y = _blobs(128, 64)
    with torch.no_grad():
        mse = ((enc(x) - y) ** 2).mean().item()
    assert mse < 0.25 * y.var(0).mean().item()


# ---- multi-view observations ----------------------------------------------------------------------
META = {"agentview_image": (3, 64, 64), "eye_in_hand_image": (3, 64, 64), "eef_pos": (3,), "gripper": (2,)}


def _obs(b, to):
    return {"agentview_image": torch.rand(b, to, 3, 64, 64) * 2 - 1,
            "eye_in_hand_image": torch.rand(b, to, 3, 64, 64) * 2 - 1,
            "eef_pos": torch.randn(b, to, 3), "gripper": torch.randn(b, to, 2),
            "unused": torch.randn(b, to, 9)}


def test_multi_image_layout():
    enc = MultiImageObsCondition(META, emb_dim=8, flatten=False, crop_size=56, **TINY).eval()
    assert enc.image_keys == ["agentview_image", "eye_in_hand_image"]
    assert enc.lowdim_keys == ["eef_pos", "gripper"]
    assert enc.feature_dim == 2 * 8 + 3 + 2
    assert enc.image_encoders["agentview_image"] is not enc.image_encoders["eye_in_hand_image"]
    obs = _obs(3, 2)
    out = enc(obs)
    assert out.shape == (3, 2, 21)
    torch.testing.assert_close(out[..., :8], enc.image_encoders["agentview_image"](obs["agentview_image"]))
    torch.testing.assert_close(out[..., 8:16], enc.image_encoders["eye_in_hand_image"](obs["eye_in_hand_image"]))
    torch.testing.assert_close(out[..., 16:19], obs["eef_pos"])
    torch.testing.assert_close(out[..., 19:], obs["gripper"])
    flat = MultiImageObsCondition(META, emb_dim=8, crop_size=56, **TINY).eval()
    flat.load_state_dict(enc.state_dict())
    torch.testing.assert_close(flat(obs), out.reshape(3, 42))
    assert flat.output_dim(2) == 42
    # no time axis -> To = 1
    single = {k: v[:, 0] for k, v in obs.items()}
    torch.testing.assert_close(enc(single), out[:, :1])
    with pytest.raises(KeyError):
        enc({"agentview_image": obs["agentview_image"]})


def test_multi_image_shape_meta_forms_and_sharing():
    nested = {"obs": {"cam": {"shape": [3, 32, 48], "type": "rgb"}, "q": {"shape": [4], "type": "low_dim"}}}
    enc = MultiImageObsCondition(nested, emb_dim=4, share_image_encoder=False, **TINY)
    assert enc.image_keys == ["cam"] and enc.feature_dim == 8
    assert enc({"cam": torch.rand(2, 3, 32, 48), "q": torch.randn(2, 4)}).shape == (2, 8)
    shared = MultiImageObsCondition(META, emb_dim=8, share_image_encoder=True, flatten=False, **TINY).eval()
    assert shared.image_encoders["agentview_image"] is shared.image_encoders["eye_in_hand_image"]
    obs = _obs(2, 1)
    out = shared(obs)
    torch.testing.assert_close(out[..., 8:16], shared.image_encoders["agentview_image"](obs["eye_in_hand_image"]))


def test_multi_image_dropout_on_dict_input():
    n, p = 400, 0.4
    enc = MultiImageObsCondition({"cam": (3, 32, 32), "q": (2,)}, emb_dim=4, dropout=p,
                                 channels=(4, 4, 4, 4), num_kp=2).train()
    obs = {"cam": torch.rand(n, 1, 3, 32, 32), "q": torch.randn(n, 1, 2) + 5}
    out = enc(obs)
    assert out.shape == (n, 6)
    assert _binomial_ok(_dropped_fraction(out), p, n)
    enc.eval()
    assert _dropped_fraction(enc(obs)) == 0.0


def test_base_is_abstract():
    with pytest.raises(NotImplementedError):
        BaseNNCondition()(torch.zeros(1))
