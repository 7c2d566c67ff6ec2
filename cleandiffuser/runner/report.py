"""Reports of offline-RL runs: score tables, a learning curve, score vs NFE, and multi-seed aggregation."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

__all__ = ["format_table", "write_report", "aggregate_runs", "format_aggregate"]


def _pm(mean, se, digits: int = 1) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if se is not None and math.isfinite(se) else f"{mean:.{digits}f}"


def _steps(k) -> str:
    """A sample-steps cell: '-' for an agent without a sampler (IQL's Gaussian policy)."""
    return "-" if k is None else str(k)


def format_table(report: dict) -> str:
    """Markdown table of one run's evaluation rows."""
    lines = [f"{report['algo']} on {report['dataset']} (seed {report['seed']}, {report['steps']:,} gradient steps)",
             "", "| sample steps | normalized score (mean ± SE) | episodes | return | ms/action |",
             "|---:|---:|---:|---:|---:|"]
    for r in report.get("rows", []):
        lines.append(f"| {_steps(r['sample_steps'])} | {_pm(r['score_mean'], r['score_se'])} | {r['episodes']} | "
                     f"{r['return_mean']:.0f} | {r.get('ms_per_action', float('nan')):.2f} |")
    return "\n".join(lines)


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_learning_curve(run_dir: Path, out: Path) -> Path | None:
    rows = _read_csv(run_dir / "log.csv")
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([float(r["step"]) for r in rows])
    losses = [k for k in rows[0] if k not in ("step", "wall_s", "updates_per_s")]
    evals = _read_csv(run_dir / "eval" / "evals.csv")
    n = len(losses) + (1 if evals else 0)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(3.6 * max(n, 1), 3.0), squeeze=False)
    for ax, key in zip(axes[0], losses):
        ax.plot(steps, [float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])
        ax.set_title(key)
        ax.set_xlabel("gradient step")
    if evals:
        ax = axes[0][-1]
        s = np.array([float(e["step"]) for e in evals])
        m = np.array([float(e["score_mean"]) for e in evals])
        se = np.array([float(e["score_se"] or "nan") for e in evals])
        ax.errorbar(s, m, yerr=se, marker="o")
        ax.set_title("normalized score")
        ax.set_xlabel("gradient step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_score_vs_nfe(rows: list[dict], out: Path, title: str = "") -> Path | None:
    rows = [r for r in rows if r.get("sample_steps") is not None and math.isfinite(r.get("score_mean", math.nan))]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    x = [r["sample_steps"] for r in rows]
    ax.errorbar(x, [r["score_mean"] for r in rows], yerr=[r["score_se"] or 0 for r in rows], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sample steps")
    ax.set_ylabel("normalized score")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(run_dir: Path, report: dict) -> dict:
    run_dir = Path(run_dir)
    plots = {"learning_curve": plot_learning_curve(run_dir, run_dir / "learning_curve.png"),
             "score_vs_nfe": plot_score_vs_nfe(report.get("rows", []), run_dir / "score_vs_nfe.png",
                                               f"{report['algo']} {Path(report['dataset']).stem}")}
    report["plots"] = {k: str(v) for k, v in plots.items() if v is not None}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (run_dir / "report.md").write_text(format_table(report) + "\n")
    return report


def agent_label(run_dir: Path, algo: str) -> str:
    """The algorithm plus the variant that changes what it is (IDQL's actor: idql-ct, idql-edm, ...),
    read from the run's resolved config.yaml."""
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        from omegaconf import OmegaConf
        actor = OmegaConf.select(OmegaConf.load(cfg_path), "agent.actor")
        if actor:
            return f"{algo}-{actor}"
    return algo


def aggregate_runs(run_dirs: list, labels: dict | None = None) -> list[dict]:
    """One row per (agent variant, dataset, sample_steps, gradient steps) over training seeds: the mean of
    the per-seed mean scores, SE across seeds (n >= 2), and the episodes pooled. The variant is
    `labels[run_dir]` where given (e.g. an experiment's own names for its settings), else `agent_label`."""
    groups: dict[tuple, list[dict]] = {}
    for d in run_dirs:
        path = Path(d) / "report.json" if Path(d).is_dir() else Path(d)
        if not Path(d).exists():
            raise FileNotFoundError(f"run directory not found: {d}")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: has the run finished its evaluation?")
        rep = json.loads(path.read_text())
        label = (labels or {}).get(d) or agent_label(path.parent, rep["algo"])
        for r in rep.get("rows", []):
            key = (label, Path(rep["dataset"]).stem, r["sample_steps"], rep["steps"])
            groups.setdefault(key, []).append({**r, "seed": rep["seed"]})
    out = []
    for (algo, dataset, k, steps), rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        means = np.array([r["score_mean"] for r in rs], dtype=float)
        se = float(np.std(means, ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.nan
        lat = [r["ms_per_action"] for r in rs if r.get("ms_per_action") is not None]
        out.append({"algo": algo, "dataset": dataset, "sample_steps": k, "steps": steps,
                    "seeds": sorted(r["seed"] for r in rs), "score_mean": float(means.mean()), "score_se": se,
                    "episodes": int(sum(r["episodes"] for r in rs)),
                    "ms_per_action": float(np.median(lat)) if lat else None})
    return out


def format_aggregate(rows: list[dict]) -> str:
    lines = ["| algo | dataset | sample steps | gradient steps | seeds | episodes | normalized score (mean ± SE over seeds) "
             "| ms/action |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lat = f"{r['ms_per_action']:.2f}" if r["ms_per_action"] is not None else "n/a"
        lines.append(f"| {r['algo']} | {r['dataset']} | {_steps(r['sample_steps'])} | {r['steps']:,} | "
                     f"{len(r['seeds'])} | {r['episodes']} | {_pm(r['score_mean'], r['score_se'])} | {lat} |")
    return "\n".join(lines)
