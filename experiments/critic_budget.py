"""Does IDQL's action selection get better when its IQL critic trains longer than its actor?

    python experiments/critic_budget.py IDQL_RUN IQL_RUN [--steps 20000 60000 ...] [--weight-temperatures 50 3]
        [--episodes 10] [--out results/critic-budget-X.md]

IDQL trains actor and critic independently, so one trained actor (IDQL_RUN) can be scored with several critics:
its own, and each kept checkpoint (step_*.ckpt, latest.ckpt) of an `iql` run on the same dataset (IQL_RUN, e.g.
`cleandiffuser train iql steps=200000 keep_every=20000`). The critic is the expensive-to-rank, cheap-to-train half
on a CPU: an IQL update costs a fraction of a diffusion actor's. Each row also scores the IQL run's own policy (its
advantage-weighted Gaussian actor) at that checkpoint, and one row the actor alone (no selection).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cleandiffuser.runner import load_agent
from cleandiffuser.runner.offline import evaluate_agent, load_pretrained_critic
from cleandiffuser.runner.rundir import write_results_page


def critic_checkpoints(iql_run: Path) -> list[Path]:
    """The kept checkpoints of an iql run in step order, then latest.ckpt once the run has finished (while it
    trains, latest.ckpt is rewritten under our feet: the critic and the policy would come from different steps)."""
    ckpts = sorted((iql_run / "checkpoints").glob("step_*.ckpt"))
    latest = iql_run / "checkpoints" / "latest.ckpt"
    return ckpts + [latest] if (iql_run / "report.json").is_file() else ckpts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("idql_run", type=Path)
    ap.add_argument("iql_run", type=Path)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help="only the IQL checkpoints of these steps (default: every kept one and latest.ckpt)")
    ap.add_argument("--weight-temperatures", type=float, nargs="+", default=None,
                    help="score IDQL at these softmax(w (Q - V)) temperatures (default: the run's own)")
    ap.add_argument("--out", type=Path, default=None, help="markdown table (default: print only)")
    args = ap.parse_args()

    run = load_agent(args.idql_run, device="cpu")
    if run.cfg.algo != "idql":
        raise SystemExit(f"{args.idql_run} is an {run.cfg.algo!r} run, not an idql one")
    cfg, agent = run.cfg, run.agent
    temps = args.weight_temperatures or [agent.weight_temperature]
    cfg.eval.episodes = args.episodes
    cfg.eval.sample_steps = [None]

    def score(policy, cfg, tag) -> dict:
        rows = evaluate_agent(policy, run.normalizer, cfg, run.env_id, args.idql_run / "eval" / "critic-budget" / tag,
                              measure_latency=False, say=lambda *_: None)
        return rows[0]

    rows = []
    own = score(agent, cfg, "own")
    fixed = cfg.agent.get("critic_path")
    rows.append((f"its own ({'fixed, from ' + str(fixed) if fixed else 'trained alongside the actor'})",
                 agent.critic.step, own, None))
    print(rows[-1][0], f"{own['score_mean']:.1f} ± {own['score_se']:.1f}", flush=True)
    n = agent.num_candidates
    agent.num_candidates = 1
    alone = score(agent, cfg, "actor-alone")
    agent.num_candidates = n
    print(f"actor alone {alone['score_mean']:.1f} ± {alone['score_se']:.1f}", flush=True)
    for ckpt in critic_checkpoints(args.iql_run):
        step = load_pretrained_critic(agent, ckpt, run.normalizer, cfg)
        if args.steps is not None and step not in args.steps:
            continue
        t = time.time()
        iql = load_agent(ckpt, device="cpu")
        iql.cfg.eval.episodes = args.episodes
        iql_policy = score(iql.agent, iql.cfg, f"iql-policy-{step:08d}")
        for w in temps:
            agent.weight_temperature = w
            with_critic = score(agent, cfg, f"iql-{step:08d}-w{w:g}")
            rows.append((f"{args.iql_run.name} {ckpt.name}, w = {w:g}", step, with_critic, iql_policy))
            print(f"critic {ckpt} ({step:,} steps), w {w:g}: IDQL {with_critic['score_mean']:.1f} ± "
                  f"{with_critic['score_se']:.1f}, IQL policy {iql_policy['score_mean']:.1f} ± "
                  f"{iql_policy['score_se']:.1f} ({time.time() - t:.0f} s)", flush=True)

    def cell(r):
        return f"{r['score_mean']:.1f} ± {r['score_se']:.1f}" if r else "-"

    lines = [f"IDQL actor: `{args.idql_run}` ({cfg.agent.actor}, {run.step:,} steps, {cfg.agent.num_candidates} "
             f"candidates, softmax({cfg.agent.weight_temperature:g} (Q - V))), dataset {cfg.dataset}, "
             f"{args.episodes} episodes per cell (eval seed {list(cfg.eval.seeds)}). The actor alone (no selection): "
             f"{cell(alone)}.", "",
             "| critic | critic steps | IDQL score | the IQL run's own policy |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {step:,} | {cell(r)} | {cell(p)} |" for name, step, r, p in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        write_results_page(args.out, f"# Critic budget: {cfg.dataset}\n\nCommand: `python experiments/critic_budget.py "
                            f"{args.idql_run} {args.iql_run} --episodes {args.episodes}"
                            + (f" --steps {' '.join(map(str, args.steps))}" if args.steps else "")
                            + (f" --weight-temperatures {' '.join(f'{w:g}' for w in temps)}"
                               if args.weight_temperatures else "")
                            + f" --out {args.out}`\n\n"
                            + table)
        (args.out.with_suffix(".json")).write_text(json.dumps(
            {"alone": alone, "rows": [{"critic": n, "step": s, "idql": r, "iql_policy": p} for n, s, r, p in rows]},
            indent=1, default=float))


if __name__ == "__main__":
    main()
