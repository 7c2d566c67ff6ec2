"""How act-time selection should be set, over training seeds: score trained IDQL runs at several softmax(w (Q - V))
temperatures, with greedy selection, with the IDQL paper's expectile resampling, and with the actor alone (one
candidate, no critic). Diffusion-QL and EDP runs (softmax(w Q) over their 50 candidates) take the temperatures and
--alone.

    python experiments/selection_sweep.py RUN [RUN ...] [--weight-temperatures 50 10 3] [--greedy] [--expectile]
        [--alone] [--sample-steps K] [--episodes 10] [--out results/selection-X.md]

Selection happens at act time only, so each setting re-scores the same trained actor and critic: the runs (one per
training seed, the same plan entry) need no retraining. Each cell is the mean ± SE over the runs of their mean
normalized score; the runs' own setting (their config's temperature) is marked, and read from their report.json
when the evaluation is the same. Each score is kept in RUN/eval/selection/<setting>/score.json and reused by a later
sweep with the same evaluation, so a sweep can be run a few runs at a time, or resumed; the table (with the per-run
scores) goes to --out and its .json.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from cleandiffuser.env.evaluation import mean_se
from cleandiffuser.runner import load_agent
from cleandiffuser.runner.offline import evaluate_agent
from cleandiffuser.runner.report import _pm as plus_minus
from cleandiffuser.runner.rundir import write_results_page


SELECTING_ALGOS = ("idql", "dql", "edp")  # the agents that draw candidates and keep one by the critic


def settings(temperatures, greedy: bool, alone: bool, expectile: bool = False,
             algo: str = "idql") -> list[tuple[str, dict]]:
    """(label, agent attributes) per setting: softmax at each temperature, then greedy, then the IDQL paper's
    expectile resampling, then the actor alone. DQL and EDP agents have one selection rule (softmax over Q)."""
    if algo != "idql" and (greedy or expectile):
        raise ValueError(f"{algo} agents select by softmax(w Q) only: greedy and expectile selection are IDQL's")
    rule = {"selection": "softmax"} if algo == "idql" else {}
    out = [(f"softmax, w = {w:g}", {**rule, "weight_temperature": float(w)}) for w in temperatures]
    if greedy:
        out.append(("greedy (argmax Q - V)", {"selection": "greedy"}))
    if expectile:
        out.append(("expectile resampling (weights tau if A >= 0, else 1 - tau)", {"selection": "expectile"}))
    if alone:
        out.append(("the actor alone (1 candidate)", {"num_candidates": 1}))
    return out


def is_own(attributes: dict, own_temperature: float) -> bool:
    """Whether a setting is the runs' own: softmax at their temperature, all their candidates."""
    return (attributes.get("weight_temperature") == own_temperature and "num_candidates" not in attributes
            and attributes.get("selection", "softmax") == "softmax")


def score_setting(agent, attributes: dict, score) -> dict:
    """score(agent) with the setting's attributes on the agent, put back afterwards."""
    before = {k: getattr(agent, k) for k in attributes}
    for k, v in attributes.items():
        setattr(agent, k, v)
    try:
        return score(agent)
    finally:
        for k, v in before.items():
            setattr(agent, k, v)


def reported_score(run, attributes: dict, episodes: int, sample_steps: int | None = None) -> float | None:
    """The run's own end-of-training score (report.json) when the setting is the run's own and the evaluation the
    same (episodes, sample steps: None is the actor's default): no need to score it again."""
    agent, cfg = run.agent, run.cfg
    if any(getattr(agent, k) != v for k, v in attributes.items()):
        return None
    report = run.path.parent.parent / "report.json"
    try:
        rows = json.loads(report.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return None
    n = episodes * len(cfg.eval.seeds)
    steps = agent.sample_steps if sample_steps is None else sample_steps
    same = [r for r in rows if r.get("sample_steps") == steps and r.get("episodes") == n]
    return float(same[0]["score_mean"]) if same else None


def cached_row(path: Path, key: dict) -> dict | None:
    """The row scored before under the same evaluation (key: episodes, eval seeds, the checkpoint's step)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved["row"] if all(saved.get(k) == v for k, v in key.items()) else None


def sweep(runs, setting_list, score_run) -> list[dict]:
    """One row per setting: each run's score (score_run(run, label, attributes) -> mean normalized score) and their
    mean ± SE over runs."""
    rows = []
    for label, attributes in setting_list:
        scores = [score_run(run, label, attributes) for run in runs]
        mean, se = mean_se(scores)
        rows.append({"setting": label, "attributes": attributes, "scores": scores, "mean": mean, "se": se})
    return rows


def format_rows(rows, own_temperature: float, names: list[str]) -> str:
    lines = ["| selection | mean ± SE | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for r in rows:
        own = is_own(r["attributes"], own_temperature)
        label = r["setting"] + (" (the runs' own)" if own else "")
        lines.append(f"| {label} | {plus_minus(r['mean'], r['se'])} | " + " | ".join(f"{s:.1f}" for s in r["scores"])
                     + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="IDQL, DQL or EDP run directories (one per training seed)")
    ap.add_argument("--weight-temperatures", type=float, nargs="+", default=None,
                    help="softmax temperatures to score (default: the runs' own)")
    ap.add_argument("--greedy", action="store_true", help="also score greedy selection")
    ap.add_argument("--expectile", action="store_true",
                    help="also score the IDQL paper's resampling (weights tau if A >= 0, else 1 - tau)")
    ap.add_argument("--alone", action="store_true", help="also score the actor alone (one candidate, no critic)")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--sample-steps", type=int, default=None, help="the actor's sample steps (default: its own)")
    ap.add_argument("--out", type=Path, default=None, help="markdown table (default: print only)")
    args = ap.parse_args()

    loaded = [load_agent(run, device="cpu") for run in args.runs]
    algos = {run.cfg.algo for run in loaded}
    for run, path in zip(loaded, args.runs):
        if run.cfg.algo not in SELECTING_ALGOS:
            raise SystemExit(f"{path} is a {run.cfg.algo!r} run; the sweep scores {', '.join(SELECTING_ALGOS)} runs")
    if len(algos) > 1:
        raise SystemExit(f"the runs are of different algorithms: {sorted(algos)}")
    algo = algos.pop()
    datasets = {str(r.cfg.dataset) for r in loaded}
    if len(datasets) > 1:
        raise SystemExit(f"the runs were trained on different datasets: {sorted(datasets)}")
    own = {float(r.cfg.agent.weight_temperature) for r in loaded}
    temperatures = args.weight_temperatures or sorted(own)

    def score_run(run, label, attributes) -> float:
        cfg = run.cfg
        reported = reported_score(run, attributes, args.episodes, args.sample_steps)
        if reported is not None:
            print(f"{run.path.parent.parent.name}: {label}: {reported:.1f} (its report.json)", flush=True)
            return reported
        cfg.eval.episodes = args.episodes
        cfg.eval.sample_steps = [args.sample_steps]
        tag = label.split(" (")[0].replace(" ", "").replace(",", "-").replace("=", "")
        out = run.path.parent.parent / "eval" / "selection" / f"{tag}-steps{args.sample_steps or 'default'}"
        key = {"episodes": args.episodes, "eval_seeds": list(cfg.eval.seeds), "step": run.step}
        row = cached_row(out / "score.json", key)
        if row is None:  # scored once per run, setting and evaluation: an interrupted sweep resumes where it was
            row = score_setting(run.agent, attributes, lambda agent: evaluate_agent(
                agent, run.normalizer, cfg, run.env_id, out, measure_latency=False, say=lambda *_: None)[0])
            out.mkdir(parents=True, exist_ok=True)
            (out / "score.json").write_text(json.dumps({**key, "row": row}, default=float))
        print(f"{run.path.parent.parent.name}: {label}: {row['score_mean']:.1f} ± {row['score_se']:.1f}", flush=True)
        return float(row["score_mean"])

    try:
        setting_list = settings(temperatures, args.greedy, args.alone, args.expectile, algo)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    rows = sweep(loaded, setting_list, score_run)
    names = [p.name for p in args.runs]
    cfg = loaded[0].cfg
    steps = args.sample_steps or loaded[0].agent.sample_steps
    actor = f"actor {cfg.agent.actor}" if algo == "idql" else "actor"
    head = (f"{algo.upper()} runs: {', '.join(f'`{p}`' for p in args.runs)} ({actor} sampled in {steps} steps, "
            f"{loaded[0].step:,} training steps, "
            f"{cfg.agent.num_candidates} candidates, critic "
            + (f"fixed, from {', '.join(sorted({f'`{r.cfg.agent.critic_path}`' for r in loaded}))}"
               if cfg.agent.get("critic_path") else "trained alongside the actor")
            + f"), dataset {cfg.dataset}. Normalized score, {args.episodes} episodes per run and setting (eval seeds "
            f"{list(cfg.eval.seeds)}); mean ± SE over the {len(loaded)} runs, then each run's mean.")
    table = format_rows(rows, next(iter(own)) if len(own) == 1 else math.nan, names)
    print("\n" + table)
    if args.out is not None:
        command = (f"python experiments/selection_sweep.py {' '.join(map(str, args.runs))}"
                   + (f" --weight-temperatures {' '.join(f'{w:g}' for w in temperatures)}"
                      if args.weight_temperatures else "")
                   + (" --greedy" if args.greedy else "") + (" --expectile" if args.expectile else "")
                   + (" --alone" if args.alone else "")
                   + (f" --sample-steps {args.sample_steps}" if args.sample_steps else "")
                   + f" --episodes {args.episodes} --out {args.out}")
        write_results_page(args.out,
                           f"# {algo.upper()} selection: {cfg.dataset}\n\nCommand: `{command}`\n\n{head}\n\n{table}\n")
        args.out.with_suffix(".json").write_text(json.dumps({"runs": names, "rows": rows}, indent=1, default=float))


if __name__ == "__main__":
    main()
