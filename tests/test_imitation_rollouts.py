"""Batched (lockstep) rollouts: the lockstep driver on fake environments, and the Push-T evaluator of
imitation policies giving the same per-episode results for any number of environments."""
import pytest
import torch
from omegaconf import OmegaConf

from cleandiffuser.env.lockstep import run_lockstep, unbatched
from cleandiffuser.imitation.evaluate import DEFAULT_EVAL_N_ENVS, eval_n_envs, make_evaluator, pusht_evaluator
from cleandiffuser.runner.config import ConfigError


# --------------------------------------------------------------------------- the lockstep driver
class CountdownEpisode:
    """Episode i lasts 1 + (3 * i) % 5 steps; obs = (i, t); records the actions it got."""

    def __init__(self, env, i):
        self.i, self.t, self.len = i, 0, 1 + (3 * i) % 5
        self.obs, self.actions = (i, 0), []
        env.append(i)  # an env here is a list of the episodes it ran

    def step(self, action):
        self.actions.append(action)
        self.t += 1
        self.obs = (self.i, self.t)
        return self.t >= self.len

    def record(self):
        return {"episode": self.i, "length": self.t, "actions": self.actions}


class EchoPolicy:
    """Acts with (slot, obs) and logs each call's slots and each reset."""

    def __init__(self):
        self.calls, self.resets = [], []

    def __call__(self, obs_list, slots):
        self.calls.append(list(slots))
        return [(s, o) for o, s in zip(obs_list, slots)]

    def reset(self, slot):
        self.resets.append(slot)


@pytest.mark.parametrize("n_envs", [1, 3, 10])
def test_run_lockstep_refills_finished_slots_and_keeps_episode_order(n_envs):
    envs = [[] for _ in range(n_envs)]
    policy = EchoPolicy()
    done = []
    records = run_lockstep(envs, 7, CountdownEpisode, policy, on_done=lambda i, r: done.append(i))
    lengths = [1 + (3 * i) % 5 for i in range(7)]
    assert [r["episode"] for r in records] == list(range(7)) and [r["length"] for r in records] == lengths
    assert sorted(done) == list(range(7))
    # each step of an episode saw its own observation, from the slot that ran it
    for r in records:
        slot = next(s for s, ran in enumerate(envs) if r["episode"] in ran)
        assert r["actions"] == [(slot, (r["episode"], t)) for t in range(r["length"])]
    # episodes start in index order, one reset each; a finished slot takes the next pending episode
    assert len(policy.resets) == 7 and sum(len(e) for e in envs) == 7
    assert all(ran == sorted(ran) for ran in envs)
    assert len([e for e in envs if e]) == min(n_envs, 7)
    # one call per step on the live slots (ascending); the batch shrinks once nothing is pending
    assert all(c == sorted(c) and len(c) <= n_envs for c in policy.calls)
    assert sum(len(c) for c in policy.calls) == sum(lengths)
    if n_envs == 1:
        assert len(policy.calls) == sum(lengths)
    else:
        assert len(policy.calls) < sum(lengths) and len(policy.calls[0]) == min(n_envs, 7)


def test_run_lockstep_errors_and_unbatched_adapter():
    with pytest.raises(ValueError, match="2 actions for 1"):
        run_lockstep([[]], 1, CountdownEpisode, lambda obs, slots: [0, 1])
    with pytest.raises(ValueError, match="n_episodes"):
        run_lockstep([[]], -1, CountdownEpisode, EchoPolicy())
    assert run_lockstep([], 0, CountdownEpisode, EchoPolicy()) == []
    resets = []
    policy = unbatched(lambda obs: obs[1] * 10, reset_fn=lambda: resets.append(1))
    records = run_lockstep([[]], 3, CountdownEpisode, policy)
    assert [r["actions"] for r in records] == [[0], [0, 10, 20, 30], [0, 10]] and len(resets) == 3
    with pytest.raises(ValueError, match="one environment"):
        policy([(0, 0), (1, 0)], [0, 1])


# --------------------------------------------------------------------------- Push-T evaluator
class PushPolicy:
    """A deterministic, batched chunk policy on Push-T's state: each chunk walks the agent from its
    position through the block (so the block moves). Counts calls and their batch sizes."""

    shape_meta = {"obs": {"state": {"shape": [5], "type": "low_dim"}}, "action": {"shape": [2]}}
    obs_keys = ["state"]
    n_obs_steps, horizon, n_action_steps = 2, 8, 4
    device = torch.device("cpu")
    training = False

    def __init__(self):
        self.batch_sizes = []

    def predict_action(self, obs):
        s = obs["state"][:, -1].to(torch.float64)  # (B, 5), newest observation
        agent, block = s[:, :2], s[:, 2:4]
        frac = torch.linspace(0.3, 1.6, self.horizon, dtype=torch.float64)[None, :, None]
        self.batch_sizes.append(len(s))
        return {"action_pred": (agent[:, None] + frac * (block - agent)[:, None]).clamp(0, 512)}


def test_pusht_evaluator_results_do_not_depend_on_n_envs():
    pytest.importorskip("gym_pusht")
    out = {}
    for n_envs in (1, 3):
        policy = PushPolicy()
        res = pusht_evaluator(max_steps=24, n_envs=n_envs)(policy, 5, 7)
        out[n_envs] = (res, policy.batch_sizes)
    (one, calls_one), (three, calls_three) = out[1], out[3]
    assert one.keys() == three.keys() and one["n_episodes"] == three["n_episodes"] == 5
    for a, b in zip(one["episodes"], three["episodes"]):
        assert a.keys() == b.keys() == {"success", "max_coverage", "final_coverage", "length", "reset_seed"}
        assert (a["success"], a["length"], a["reset_seed"]) == (b["success"], b["length"], b["reset_seed"])
        # gym-pusht sums the T's two polygons in set order (by object id): the last bit may differ
        assert a["max_coverage"] == pytest.approx(b["max_coverage"], rel=1e-12, abs=1e-15)
    assert one["mean_max_coverage"] > 0  # the block was moved
    # 24 steps = 6 chunks of 4 per episode: 30 batch-1 calls, or 6 calls of 3 envs + 6 of 2
    assert calls_one == [1] * 30 and calls_three == [3] * 6 + [2] * 6


def test_n_envs_setting_and_errors():
    cfg = OmegaConf.create({"task": {"env": "pusht", "rollout_horizon": 5}, "training": {}})
    assert eval_n_envs(cfg) == DEFAULT_EVAL_N_ENVS
    cfg.training.eval_n_envs = 4
    assert eval_n_envs(cfg) == 4
    for bad in (0, -2, 1.5):
        cfg.training.eval_n_envs = bad
        with pytest.raises(ConfigError, match="n_envs"):
            eval_n_envs(cfg)
    pytest.importorskip("gym_pusht")
    with pytest.raises(ConfigError, match="n_envs"):
        make_evaluator(cfg, n_envs=0)
    with pytest.raises(ConfigError, match="n_envs"):
        pusht_evaluator(5, n_envs=0)
    from cleandiffuser.env import pusht as ptd
    with pytest.raises(ValueError, match="batch policy"):
        ptd.evaluate_pusht(lambda obs: obs[:2], 2, seed=0, max_steps=5, n_envs=2)
    with pytest.raises(ValueError, match="n_envs"):
        ptd.evaluate_pusht(lambda obs: obs[:2], 2, seed=0, max_steps=5, n_envs=0)
