import random
from copy import deepcopy

import numpy as np
import torch
import torch.nn as nn

from cleandiffuser.utils import DQLCritic, IDQLQNet, IDQLVNet, set_seed


def test_idql_q_twin_heads_and_min():
    q = IDQLQNet(5, 2, hidden_dim=32)
    obs, act = torch.randn(64, 5), torch.randn(64, 2)
    q1, q2 = q.both(obs, act)
    assert q1.shape == q2.shape == (64, 1)
    assert not torch.allclose(q1, q2)  # independently initialized heads
    out = q(obs, act)
    assert out.shape == (64, 1)
    torch.testing.assert_close(out, torch.minimum(q1, q2))
    assert ((out == q1) | (out == q2)).all() and (q1 < q2).any() and (q2 < q1).any()
    # architecture: two Mish hidden layers per head, optional LayerNorm
    assert [m.out_features for m in q.q1 if isinstance(m, nn.Linear)] == [32, 32, 1]
    assert sum(isinstance(m, nn.Mish) for m in q.q1) == 2
    assert not any(isinstance(m, nn.LayerNorm) for m in q.modules())
    assert sum(isinstance(m, nn.LayerNorm) for m in IDQLQNet(5, 2, 32, layer_norm=True).modules()) == 4


def test_idql_q_target_copy_is_frozen_and_follows_source_on_copy():
    q = IDQLQNet(3, 1, hidden_dim=16)
    target = deepcopy(q).requires_grad_(False).eval()
    obs, act = torch.randn(8, 3), torch.randn(8, 1)
    torch.testing.assert_close(target(obs, act), q(obs, act))
    assert all(not p.requires_grad for p in target.parameters())
    loss = q(obs, act).pow(2).mean()
    loss.backward()
    assert all(p.grad is None for p in target.parameters())


def test_idql_v_net_can_fit_expectile_style_targets():
    v = IDQLVNet(4, hidden_dim=32)
    assert v(torch.randn(7, 4)).shape == (7, 1)
    opt = torch.optim.Adam(v.parameters(), lr=3e-3)
    w = torch.randn(4, 1)
    for _ in range(200):
        obs = torch.randn(128, 4)
        loss = (v(obs) - obs @ w).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    obs = torch.randn(256, 4)
    assert (v(obs) - obs @ w).pow(2).mean() < 0.05 * (obs @ w).var()


def test_dql_critic():
    c = DQLCritic(4, 3, hidden_dim=32)
    obs, act = torch.randn(16, 4), torch.randn(16, 3)
    q1, q2 = c.both(obs, act)
    f1, f2 = c(obs, act)
    torch.testing.assert_close(q1, f1)
    torch.testing.assert_close(q2, f2)
    assert q1.shape == (16, 1) and not torch.allclose(q1, q2)
    torch.testing.assert_close(c.q_min(obs, act), torch.minimum(q1, q2))
    assert sum(isinstance(m, nn.Mish) for m in c.q1) == 3


def test_set_seed_reproducible():
    def draw():
        return torch.randn(5), np.random.rand(5), random.random(), torch.nn.Linear(3, 3).weight.detach()

    set_seed(123)
    a = draw()
    set_seed(123)
    b = draw()
    set_seed(124)
    c = draw()
    torch.testing.assert_close(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    torch.testing.assert_close(a[3], b[3])
    assert not torch.equal(a[0], c[0]) and not np.array_equal(a[1], c[1]) and a[2] != c[2]
