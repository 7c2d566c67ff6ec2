"""Flow Q-learning: the one-step policy picks the rewarded mode of a bandit and stays on the data's support,
the distillation pulls it onto the flow's actions, resume reproduces training, bad configs are refused."""
import functools
from pathlib import Path

import pytest
import torch
import yaml

from cleandiffuser.algorithms import ALGORITHMS, FQLAgent
from cleandiffuser.serialization import load_checkpoint, save_checkpoint
from test_algorithms_offline import best_action, graded_bandit, reward, train

CONFIGS = Path(__file__).resolve().parent.parent / "cleandiffuser" / "configs"
SMALL = {"lr": 3e-3, "policy": {"hidden_dim": 64}, "critic": {"hidden_dim": 64},
         "flow_params": {"hidden_dim": 64, "lr": 3e-3}, "flow_steps": 5}


def build(**changes) -> FQLAgent:
    return FQLAgent.from_config(2, 1, {**SMALL, **changes}, steps=100)


@functools.cache
def trained(alpha: float, steps: int = 500):
    torch.manual_seed(0)
    agent = build(alpha=alpha)
    return agent, train(agent, graded_bandit(20_000), steps)


def test_the_one_step_policy_picks_the_rewarded_mode_on_the_data():
    agent, logs = trained(1.0)
    assert all(torch.isfinite(torch.tensor(list(log.values()))).all() for log in logs)
    s = torch.rand(2000, 2) * 2 - 1
    s = s[s[:, 0].abs() > 0.2]  # away from the reward's switch at s[0] = 0
    a = agent.act(s)
    assert a.shape == (s.shape[0], 1) and a.abs().max() <= 1.0
    assert ((a - best_action(s)).abs() < 0.5).float().mean() > 0.95  # closer to the rewarded mode, in one step
    assert ((a.abs() - 0.5).abs() < 0.3).float().mean() > 0.9  # within the data's support (modes +-0.5, std 0.15)
    assert reward(s, a).mean() > 0.6  # the data's behaviour averages about -0.1
    assert agent.nfe() == 1


def test_with_a_large_distillation_weight_it_reproduces_the_flow():
    """alpha large: the one-step policy maps each noise to the behaviour flow's action for that noise, so it keeps
    the data's two modes in proportion instead of regressing to their mean."""
    torch.manual_seed(0)
    agent = build(alpha=1000.0)
    logs = train(agent, graded_bandit(20_000, p_plus=0.7, spread=0.05), 600)
    assert sum(log["distill_loss"] for log in logs[-50:]) < 0.5 * sum(log["distill_loss"] for log in logs[:50])
    s, z = torch.rand(4000, 2) * 2 - 1, torch.randn(4000, 1)
    a, flow = agent.policy_actions(s, z).detach(), agent.flow_actions(s, z)
    assert (a - flow).abs().mean() < 0.2  # the modes are 1.0 apart
    assert 0.55 < (a > 0).float().mean() < 0.85  # data: 70 % on +0.5, whatever the state


def test_distillation_target_is_the_flows_euler_solution_without_gradient():
    agent = build()
    obs, noise = torch.randn(8, 2), torch.randn(8, 1)
    target = agent.flow_actions(obs, noise)
    assert not target.requires_grad
    x, net = noise.clone(), agent.flow.model
    with torch.no_grad():  # Euler on the velocity from t = 1 (noise) to 0 (data), 5 uniform steps, then clipped
        cond = net["condition"](obs)
        for i in range(agent.flow_steps, 0, -1):
            x = x - net["diffusion"](x, torch.full((8,), i / agent.flow_steps), cond) / agent.flow_steps
    assert torch.allclose(target, x.clamp(-1, 1), atol=1e-6)
    # and Euler on a constant velocity is exact: x_0 = z - v
    agent.flow.model["diffusion"].forward = lambda x, t, c: torch.full_like(x, 0.25)
    assert torch.allclose(agent.flow_actions(obs, torch.full((8, 1), 0.5)), torch.full((8, 1), 0.25))


def test_compiled_update_matches_the_eager_one():
    """compile: true compiles the losses as one graph; the noise is drawn outside it, so the same seed gives the
    same losses and parameters as eager (up to float reassociation)."""
    data = graded_bandit(256)
    batch = {"obs": data["obs"], "next_obs": data["next_obs"], "act": data["act"], "rew": data["rew"],
             "tml": data["tml"]}
    agents = []
    for compiled in (False, True):
        torch.manual_seed(0)
        agent = build()
        if compiled:
            agent.compile_network()
        torch.manual_seed(1)
        logs = [agent.update(batch) for _ in range(3)]
        agents.append((agent, logs))
    (eager, l_eager), (comp, l_comp) = agents
    for a, b in zip(l_eager, l_comp):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-4 * (1 + abs(a[k])), k
    for p, q in zip(eager.policy.parameters(), comp.policy.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_checkpoint_round_trip_reproduces_act_and_training(tmp_path):
    data = graded_bandit(512)
    agent = build(num_candidates=4)
    train(agent, data, 10, batch_size=32)
    save_checkpoint(tmp_path / "fql.ckpt", *agent.checkpoint_state())
    tensors, meta = load_checkpoint(tmp_path / "fql.ckpt")
    fresh = build(num_candidates=4)
    fresh.load_checkpoint_state(tensors, meta)
    s = data["obs"]["state"][:16]
    assert torch.equal(agent.act(s, generator=torch.Generator().manual_seed(3)),
                       fresh.act(s, generator=torch.Generator().manual_seed(3)))
    batch = {"obs": {"state": s}, "next_obs": {"state": s}, "act": data["act"][:16], "rew": data["rew"][:16],
             "tml": torch.zeros(16, 1)}
    torch.manual_seed(5)
    l1 = agent.update(batch)
    torch.manual_seed(5)
    l2 = fresh.update(batch)
    assert l1 == l2 and fresh.updates == agent.updates == 11


def test_yaml_defaults_build():
    cfg = yaml.safe_load((CONFIGS / "fql.yaml").read_text())
    assert cfg["algo"] == "fql" and ALGORITHMS["fql"] is FQLAgent
    agent = FQLAgent.from_config(17, 6, cfg["agent"], steps=cfg["steps"])
    assert agent.act(torch.zeros(2, 17)).shape == (2, 6)
    assert (agent.alpha, agent.flow_steps, agent.discount, agent.tau, agent.q_agg) == (1.0, 10, 0.99, 0.005, "mean")


@pytest.mark.parametrize("cfg, match", [
    ({"alphaa": 1.0}, r"unknown key\(s\) \['alphaa'\] in agent"),
    ({"alpha": -1.0}, "alpha must be >= 0"),
    ({"alpha": float("nan")}, "alpha must be a finite number"),
    ({"flow_steps": 0}, "flow_steps must be >= 1"),
    ({"q_agg": "max"}, "q_agg='max' is not one of"),
    ({"normalize_q_loss": "yes"}, "normalize_q_loss must be true or false"),
    ({"policy": {"width": 3}}, r"unknown key\(s\) \['width'\] in agent.policy"),
    ({"flow_params": {"lr": 0}}, "lr must be > 0"),
])
def test_from_config_rejects_unknown_keys_and_bad_values(cfg, match):
    with pytest.raises(ValueError, match=match):
        FQLAgent.from_config(3, 2, cfg, steps=10)


@pytest.mark.parametrize("override, key", [("agent.alpha=nan", "agent.alpha"), ("agent.q_agg=max", "agent.q_agg"),
                                           ("agent.flow_steps=0", "agent.flow_steps")])
def test_run_config_checks_fql_values_before_any_work(override, key):
    from cleandiffuser.runner import load_config
    from cleandiffuser.runner.config import ConfigError, check_config
    with pytest.raises(ConfigError, match=key):
        check_config(load_config("fql", [override]))
