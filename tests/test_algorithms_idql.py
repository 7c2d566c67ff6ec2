"""IQL and IDQL learn small tasks whose answers are known in closed form."""
import copy

import pytest
import torch

from cleandiffuser.algorithms import GaussianActor, IDQLAgent, IQLAgent, IQLCritic, make_idql_actor
from cleandiffuser.dataset.dataset_utils import TensorBatchSampler
from cleandiffuser.diffusion import (
    ContinuousConsistencyModel,
    ContinuousEDM,
    DiscreteDiffusionSDE,
)
from cleandiffuser.nn_diffusion import IDQLMlp

SMALL = dict(emb_dim=32, hidden_dim=64, n_blocks=2, dropout=0.0, ema_rate=0.99, lr=1e-3)


def one_step_data(obs, act, rew) -> dict:
    """Transitions of one-step episodes (done = 1) in D4RLMuJoCoTDDataset's item structure."""
    n = obs.shape[0]
    return {"obs": {"state": obs}, "next_obs": {"state": torch.zeros_like(obs)}, "act": act,
            "rew": rew.view(n, 1), "tml": torch.ones(n, 1)}


# ---------------------------------------------------------------------- IQL on a known bandit
def tabular_bandit(n: int = 2000):
    """Two states s in {-1, +1}, two actions a in {-0.5, +0.5}.
    s = +1: a = +0.5 (r = 1) with prob. 3/4, a = -0.5 (r = 0) with prob. 1/4.
    s = -1: a = -0.5 (r = 1) and a = +0.5 (r = -1), each with prob. 1/2."""
    g = torch.Generator().manual_seed(0)
    s = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    good = torch.rand(n, generator=g) < torch.where(s > 0, 0.75, 0.5)
    a = torch.where(good, 0.5 * s, -0.5 * s)
    r = torch.where(good, 1.0, torch.where(s > 0, 0.0, -1.0))
    return one_step_data(s[:, None], a[:, None], r)


def expectile(values, probs, tau):
    """The tau-expectile v of a discrete distribution: sum p |tau - 1(x < v)| (x - v) = 0."""
    lo, hi = min(values), max(values)
    for _ in range(60):
        v = (lo + hi) / 2
        g = sum(p * abs(tau - (x < v)) * (x - v) for x, p in zip(values, probs))
        lo, hi = (v, hi) if g > 0 else (lo, v)
    return v


@pytest.mark.parametrize("tau", [0.5, 0.9])
def test_iql_learns_q_and_expectile_v(tau):
    critic = IQLCritic(1, 1, hidden_dim=32, expectile=tau, tau=0.05, lr=3e-3)
    sampler = TensorBatchSampler(tabular_bandit(), 256, generator=0)
    for _ in range(400):
        critic.update(sampler.sample())
    s = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    a = torch.tensor([[0.5], [-0.5], [-0.5], [0.5]])
    assert torch.allclose(critic.q(s, a).squeeze(1), torch.tensor([1.0, 0.0, 1.0, -1.0]), atol=0.1)
    v = critic.v(torch.tensor([[1.0], [-1.0]])).squeeze(1)
    want = torch.tensor([expectile([1.0, 0.0], [0.75, 0.25], tau), expectile([1.0, -1.0], [0.5, 0.5], tau)])
    assert torch.allclose(v, want, atol=0.1), (v, want)  # tau 0.5: the means 0.75 and 0.0


def test_polyak_moves_the_target_tau_toward_online():
    critic = IQLCritic(3, 2, hidden_dim=16, tau=0.005)
    with torch.no_grad():  # make online and target differ before the step
        for p in critic.q_net.parameters():
            p.add_(1.0)
    before = [p.clone() for p in critic.q_target.parameters()]
    batch = one_step_data(torch.randn(8, 3), torch.randn(8, 2), torch.randn(8))
    critic.update(batch)
    for old, new, online in zip(before, critic.q_target.parameters(), critic.q_net.parameters()):
        assert torch.allclose(new, 0.995 * old + 0.005 * online, atol=1e-6)
        assert (new - old).abs().max() < 0.01  # not 99.5% of the way
    assert not any(p.requires_grad for p in critic.q_target.parameters())


def test_compiled_critic_trains_like_the_eager_one():
    torch.manual_seed(0)
    eager = IQLCritic(3, 2)
    compiled = copy.deepcopy(eager).compile_network()
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        batch = {"obs": torch.randn(64, 3, generator=g), "next_obs": torch.randn(64, 3, generator=g),
                 "act": torch.rand(64, 2, generator=g) * 2 - 1, "rew": torch.randn(64, 1, generator=g),
                 "tml": (torch.rand(64, 1, generator=g) < 0.1).float()}
        a, b = eager.update(batch), compiled.update(batch)
        assert a["q_loss"] == pytest.approx(b["q_loss"], rel=1e-4, abs=1e-6)
        assert a["v_loss"] == pytest.approx(b["v_loss"], rel=1e-4, abs=1e-6)
    for x, y in zip(eager.q_target.parameters(), compiled.q_target.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_critic_save_load_roundtrip(tmp_path):
    critic = IQLCritic(3, 2, hidden_dim=16)
    batch = one_step_data(torch.randn(8, 3), torch.randn(8, 2), torch.randn(8))
    for _ in range(3):
        critic.update(batch)
    critic.save(tmp_path / "critic.ckpt")
    other = IQLCritic(3, 2, hidden_dim=16).load(tmp_path / "critic.ckpt")
    assert other.step == 3 and set(other.state_dict()) == set(critic.state_dict())
    for k, v in critic.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    critic.update(batch)  # the optimizer state came along: both take the same next step
    other.update(batch)
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    assert torch.allclose(critic.q(obs, act, target=False), other.q(obs, act, target=False))
    with pytest.raises(ValueError, match="expectile"):
        IQLCritic(3, 2, hidden_dim=16, expectile=0.9).load(tmp_path / "critic.ckpt")


# ---------------------------------------------------------------------- the IQL algorithm
TINY_IQL = {"critic": {"hidden_dim": 32, "tau": 0.05, "lr": 3e-3}, "actor_params": {"hidden_dim": 32},
            "actor_lr": 3e-3}


def test_gaussian_actor_log_prob_is_the_normal_density():
    actor = GaussianActor(3, 2, hidden_dim=8)
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-0.3, 0.4]))
    obs, act = torch.randn(6, 3), torch.rand(6, 2) * 2 - 1
    want = torch.distributions.Normal(actor(obs), actor.log_std.exp()).log_prob(act).sum(-1)
    torch.testing.assert_close(actor.log_prob(obs, act), want)
    assert actor(obs).abs().max() < 1


def test_iql_policy_takes_the_higher_advantage_action_where_bc_would_average():
    """On the tabular bandit the data's mean action is +0.25 at s = +1 and 0 at s = -1; advantage weighting
    moves the policy's mean onto the rewarded action (+0.5 and -0.5)."""
    torch.manual_seed(0)
    agent = IQLAgent.from_config(1, 1, TINY_IQL, steps=600)
    sampler = TensorBatchSampler(tabular_bandit(), 256, generator=0)
    logs = [agent.update(sampler.sample()) for _ in range(600)]
    assert set(logs[0]) == {"q_loss", "v_loss", "actor_loss", "adv_mean", "weight_mean", "lr"}
    assert logs[-1]["lr"] < 1e-5 and logs[0]["lr"] == pytest.approx(3e-3)  # cosine decay to 0 over `steps`
    a = agent.act(torch.tensor([[1.0], [-1.0]])).squeeze(1)
    assert torch.allclose(a, torch.tensor([0.5, -0.5]), atol=0.12), a
    # beta = 0 weighs every action alike: plain Gaussian behaviour cloning of the data's mean
    torch.manual_seed(0)
    bc = IQLAgent.from_config(1, 1, {**TINY_IQL, "beta": 0.0, "lr_decay": False}, steps=600)
    for _ in range(600):
        bc.update(sampler.sample())
    a = bc.act(torch.tensor([[1.0], [-1.0]])).squeeze(1)
    assert torch.allclose(a, torch.tensor([0.25, 0.0]), atol=0.1), a


def test_iql_checkpoint_round_trip_continues_training_identically(tmp_path):
    from cleandiffuser.serialization import load_checkpoint, save_checkpoint
    sampler = TensorBatchSampler(tabular_bandit(512), 64, generator=0)
    agent = IQLAgent.from_config(1, 1, TINY_IQL, steps=50)
    for _ in range(7):
        agent.update(sampler.sample())
    save_checkpoint(tmp_path / "iql.ckpt", *agent.checkpoint_state())
    fresh = IQLAgent.from_config(1, 1, TINY_IQL, steps=50)
    fresh.load_checkpoint_state(*load_checkpoint(tmp_path / "iql.ckpt"))
    assert fresh.updates == 7
    batch = sampler.sample()
    assert agent.update(batch) == fresh.update(batch)  # optimizers, target network and lr schedule came along
    s = torch.tensor([[1.0], [-1.0]])
    assert torch.equal(agent.act(s), fresh.act(s))


@pytest.mark.parametrize("cfg, match", [
    ({"temperature": 3.0}, r"unknown key\(s\) \['temperature'\] in agent"),
    ({"critic": {"expectle": 0.7}}, r"unknown key\(s\) \['expectle'\] in agent.critic"),
    ({"actor_params": {"n_blocks": 2}}, r"unknown key\(s\) \['n_blocks'\] in agent.actor_params"),
    ({"beta": -1.0}, "beta must be >= 0"),
    ({"max_weight": 0}, "max_weight must be > 0"),
    ({"lr_decay": "yes"}, "lr_decay must be true or false"),
    ({"critic": {"expectile": 1.0}}, "expectile must be in"),
    ({"actor_params": {"n_layers": 0}}, "n_layers must be >= 1"),
])
def test_iql_from_config_rejects_unknown_keys_and_bad_values(cfg, match):
    with pytest.raises(ValueError, match=match):
        IQLAgent.from_config(3, 2, cfg, steps=10)


def test_idql_with_a_fixed_critic_trains_the_actor_only():
    critic = IQLCritic(2, 1, hidden_dim=16)
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    agent = IDQLAgent(make_idql_actor("ddpm", 2, 1, **SMALL), critic, train_critic=False)
    sampler = TensorBatchSampler(contextual_bandit(256), 32, generator=0)
    out = [agent.update(sampler.sample()) for _ in range(3)]
    assert all(set(o) == {"actor_loss"} for o in out)
    assert all(torch.equal(v, critic.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="train_critic must be true or false"):
        IDQLAgent(agent.actor, critic, train_critic="no")


# ---------------------------------------------------------------------- IDQL on a contextual bandit
def contextual_bandit(n: int, act_dim: int = 1, seed: int = 0):
    """s ~ U[-1, 1]^2; actions half near +0.5, half near -0.5 (independent of s); reward 1 when the
    action's mode has the sign of s[0], else 0; one-step episodes."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, 2, generator=g) * 2 - 1
    mode = torch.where(torch.rand(n, 1, generator=g) < 0.5, 0.5, -0.5)
    a = (mode + 0.05 * torch.randn(n, act_dim, generator=g)).clamp(-1, 1)
    r = (torch.sign(mode.squeeze(1)) == torch.sign(s[:, 0])).float()
    return one_step_data(s, a, r)


@pytest.fixture(scope="module")
def bandit():
    torch.manual_seed(0)
    return TensorBatchSampler(contextual_bandit(20_000), 256, generator=0)


@pytest.fixture(scope="module")
def critic(bandit):
    torch.manual_seed(0)
    critic = IQLCritic(2, 1, hidden_dim=64, tau=0.05, lr=3e-3)
    for _ in range(600):
        critic.update(bandit.sample())
    return critic


def train_actor(actor, sampler, steps):
    agent = IDQLAgent(actor, critic=None)
    for _ in range(steps):
        agent.update_actor(sampler.sample())
    return actor


@pytest.fixture(scope="module")
def ddpm_actor(bandit):
    torch.manual_seed(0)
    return train_actor(make_idql_actor("ddpm", 2, 1, **SMALL), bandit, 500)


@pytest.fixture(scope="module")
def ct_actor(bandit):
    torch.manual_seed(0)  # a short consistency-training curriculum (N up to 160 levels)
    return train_actor(make_idql_actor("ct", 2, 1, s1=160, curriculum_cycle=700, **SMALL), bandit, 700)


def test_critic_ranks_the_rewarded_mode(critic):
    s = contextual_bandit(1000, seed=1)["obs"]["state"]
    good = torch.where(s[:, :1] > 0, 0.5, -0.5)
    gap = (critic.q(s, good) - critic.q(s, -good)).squeeze(1)  # true gap: 1, except on s[0] = 0
    assert (gap > 0).float().mean() > 0.97
    assert (gap[s[:, 0].abs() > 0.1] > 0.5).float().mean() > 0.95


# (actor, BC sample steps, fraction of BC samples within 0.2 of a mode, agent sample steps);
# DDPM with T = 5 ends with one x0 prediction from sigma ~ 0.3, so its samples are blurrier.
ACTORS = [("ddpm", 5, 0.6, 5), ("ct", 2, 0.75, 1), ("ct", 2, 0.75, 2)]


@pytest.mark.parametrize("kind, bc_steps, near_mode, act_steps", ACTORS)
def test_bc_actor_samples_both_modes_and_idql_picks_the_rewarded_one(kind, bc_steps, near_mode, act_steps,
                                                                      critic, request):
    actor = request.getfixturevalue(f"{kind}_actor")
    s = contextual_bandit(1000, seed=1)["obs"]["state"]
    bc, _ = actor.sample(torch.zeros(1000, 1), sample_steps=bc_steps, condition_cfg=s)
    assert ((bc.abs() - 0.5).abs() < 0.2).float().mean() > near_mode
    assert 0.35 < (bc > 0).float().mean() < 0.65  # both modes, about half each, whatever s is
    assert (torch.sign(bc[:, 0]) == torch.sign(s[:, 0])).float().mean() < 0.65  # BC alone ignores reward
    for selection, better_than in (("softmax", 0.9), ("greedy", 0.9), ("expectile", 0.6)):
        agent = IDQLAgent(actor, critic, num_candidates=16, selection=selection, sample_steps=act_steps)
        a = agent.act(s[:300])
        assert a.shape == (300, 1)
        right = (torch.sign(a[:, 0]) == torch.sign(s[:300, 0])).float().mean()
        assert right > better_than, (kind, selection, right)  # expectile: weights 0.7 vs 0.3, a soft preference


# ---------------------------------------------------------------------- act() mechanics
class FixedCritic:
    """Q(s, a) = -|a - s|, V = 0: the best candidate is the one closest to the observation."""
    act_dim = 1

    def q(self, obs, act):
        return -(act - obs).abs()

    def v(self, obs):
        return torch.zeros(obs.shape[0], 1)


def test_act_samples_once_with_all_candidates_and_selects_per_observation():
    actor = make_idql_actor("ddpm", 1, 1, emb_dim=8, hidden_dim=8, n_blocks=1)
    calls = []
    original = actor.sample

    def counting_sample(prior, **kw):
        calls.append((prior.shape[0], kw["n_samples"], kw["condition_cfg"].clone()))
        return original(prior, **kw)

    actor.sample = counting_sample
    obs = torch.tensor([[-0.8], [0.0], [0.7]])
    greedy = IDQLAgent(actor, FixedCritic(), num_candidates=64, selection="greedy")
    a = greedy.act(obs)
    assert len(calls) == 1 and calls[0][:2] == (3 * 64, 3 * 64)
    assert torch.equal(calls[0][2], obs.repeat_interleave(64, 0))  # candidates b*N..b*N+N-1 belong to obs b
    assert a.shape == (3, 1)
    # the untrained actor spreads over [-1, 1]; the greedy pick is the candidate closest to obs
    assert (a - obs).abs().max() < 0.2
    soft = IDQLAgent(actor, FixedCritic(), num_candidates=64, weight_temperature=1e4)
    assert (soft.act(obs) - obs).abs().max() < 0.2 and len(calls) == 2
    flat = IDQLAgent(actor, FixedCritic(), num_candidates=64, weight_temperature=0.0)
    assert (flat.act(obs.repeat(50, 1)) - obs.repeat(50, 1)).abs().mean() > 0.2  # uniform: random picks


def test_expectile_selection_resamples_with_the_idql_papers_weights():
    """Weights tau for A >= 0 and 1 - tau for A < 0, whatever A's size (softmax would follow the size)."""
    agent = IDQLAgent(make_idql_actor("ddpm", 1, 1, emb_dim=8, hidden_dim=8, n_blocks=1),
                      IQLCritic(1, 1, 8, expectile=0.8), num_candidates=4, selection="expectile")
    b = 20000
    cand = torch.arange(4.0).view(1, 4, 1).expand(b, 4, 1)
    adv = torch.tensor([[-5.0, -0.01, 0.01, 5.0]]).expand(b, 4)
    agent.candidates = lambda obs: (cand, adv)
    picked = agent.act(torch.zeros(b, 1), generator=torch.Generator().manual_seed(0))[:, 0]
    freq = torch.stack([(picked == k).float().mean() for k in range(4)])
    assert torch.allclose(freq, torch.tensor([0.1, 0.1, 0.4, 0.4]), atol=0.015), freq
    with pytest.raises(ValueError, match="'expectile'"):
        IDQLAgent(agent.actor, agent.critic, selection="weighted")


def test_make_idql_actor_kinds():
    ddpm = make_idql_actor("ddpm", 3, 2)
    assert isinstance(ddpm, DiscreteDiffusionSDE) and ddpm.diffusion_steps == 5 and ddpm.predict_noise
    assert ddpm.ema_rate == 0.9999 and ddpm.optimizer.param_groups[0]["lr"] == 3e-4
    assert torch.equal(ddpm.x_max, torch.ones(1, 2)) and torch.equal(ddpm.x_min, -torch.ones(1, 2))
    assert IDQLAgent(ddpm, IQLCritic(3, 2, 16)).solver == "ddpm" and IDQLAgent(ddpm, None).sample_steps == 5
    assert isinstance(make_idql_actor("edm", 3, 2, **SMALL), ContinuousEDM)
    ct = make_idql_actor("ct", 3, 2, **SMALL)
    assert isinstance(ct, ContinuousConsistencyModel) and ct.teacher is None
    assert ct.model["diffusion"].map_noise is not None and "Fourier" in repr(ct.model["diffusion"].map_noise)
    with pytest.raises(ValueError, match="teacher"):
        make_idql_actor("cd", 3, 2)
    with pytest.raises(ValueError, match="kind"):
        make_idql_actor("gan", 3, 2)
    edm = make_idql_actor("edm", 3, 2, **SMALL)
    cd = make_idql_actor("cd", 3, 2, teacher=edm, ema_rate=0.99)
    assert cd.teacher is edm and isinstance(cd.model["diffusion"], IDQLMlp)
    batch = one_step_data(torch.randn(4, 3), torch.rand(4, 2) * 2 - 1, torch.zeros(4))
    assert torch.isfinite(torch.tensor(IDQLAgent(cd, None).update_actor(batch)["loss"]))
