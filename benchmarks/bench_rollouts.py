"""Wall time of Push-T rollouts of a slow chunk policy, one environment at a time vs several in lockstep.

    python benchmarks/bench_rollouts.py [--episodes 10] [--n-envs 1 10] [--sleep-ms 50] [--max-steps 300]

The policy is a stand-in for a slow teacher: every predict_action call sleeps --sleep-ms (whatever the
batch size, as a network forward on a few chunks costs about what it costs on one) and returns a
deterministic chunk that walks the agent through the block (horizon 16, To 2, Ta 8, as Diffusion Policy).
The rollouts go through the imitation evaluator (pusht_evaluator -> BatchPolicyWrapper -> evaluate_pusht),
so with n_envs envs the policy is called once per replanning step for all of them. Needs gym-pusht.
"""
import argparse
import time

import torch

from cleandiffuser.imitation.evaluate import pusht_evaluator


class SlowPolicy:
    shape_meta = {"obs": {"state": {"shape": [5], "type": "low_dim"}}, "action": {"shape": [2]}}
    obs_keys = ["state"]
    n_obs_steps, horizon, n_action_steps = 2, 16, 8
    device = torch.device("cpu")

    def __init__(self, sleep_s: float):
        self.sleep_s, self.calls = sleep_s, 0

    def predict_action(self, obs):
        time.sleep(self.sleep_s)
        self.calls += 1
        s = obs["state"][:, -1].to(torch.float64)
        agent, block = s[:, :2], s[:, 2:4]
        frac = torch.linspace(0.2, 1.5, self.horizon, dtype=torch.float64)[None, :, None]
        return {"action_pred": (agent[:, None] + frac * (block - agent)[:, None]).clamp(0, 512)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--n-envs", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--sleep-ms", type=float, default=50.0)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"Push-T, {args.episodes} episodes of at most {args.max_steps} steps, policy call = {args.sleep_ms:g} ms "
          f"sleep\n")
    print(f"{'n_envs':>6}{'wall s':>9}{'policy calls':>14}{'success':>9}{'mean max coverage':>19}")
    results = {}
    for n_envs in args.n_envs:
        policy = SlowPolicy(args.sleep_ms / 1000)
        t = time.perf_counter()
        res = pusht_evaluator(args.max_steps, n_envs=n_envs)(policy, args.episodes, args.seed)
        wall = time.perf_counter() - t
        results[n_envs] = [(e["success"], e["length"]) for e in res["episodes"]]
        print(f"{n_envs:>6}{wall:>9.2f}{policy.calls:>14}{res['success_rate']:>9.2f}{res['mean_max_coverage']:>19.4f}",
              flush=True)
    same = len({tuple(r) for r in results.values()}) == 1
    print(f"\nper-episode (success, length) identical across n_envs: {same}")


if __name__ == "__main__":
    main()
