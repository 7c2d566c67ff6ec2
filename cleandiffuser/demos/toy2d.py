"""The built-in demo: one-step generation on a 2-D mixture of 8 Gaussians.

Trains an EDM teacher (`steps`), distils a consistency model from it (CD, `steps` / 2), trains another
by consistency training (CT, 2 * `steps`), and compares them with the data: sliced Wasserstein distance, mode coverage and
milliseconds per sample call. Writes a plot, a JSON report and the checkpoints to `out`.
"""
import json
import os
import time

import torch

from ..diffusion import ContinuousConsistencyModel, ContinuousEDM
from ..nn_diffusion import IDQLMlp
from ..toy import gaussian_ring, sample_quality


def _net(**kw):
    return IDQLMlp(0, 2, emb_dim=32, hidden_dim=64, n_blocks=2, dropout=0.0, **kw)


def _train(model, steps, desc, **update_kw):
    from tqdm import trange
    bar = trange(steps, desc=desc, leave=False, mininterval=0.5)
    for i in bar:
        log = model.update(gaussian_ring(256)[0], **update_kw)
        if i % 200 == 0:
            bar.set_postfix(loss=f"{log['loss']:.4f}", refresh=False)
    return model


def _evaluate(name, model, n, **kw):
    model.sample(torch.zeros(n, 2), **kw)  # warm-up
    t0 = time.perf_counter()
    x, log = model.sample(torch.zeros(n, 2), **kw)
    ms = (time.perf_counter() - t0) * 1000
    q = sample_quality(x)
    return x, {"model": name, "nfe": log["nfe"], "sliced_wasserstein": round(q["sw"], 4),
               "near_mode": round(q["near"], 3), "modes_covered": q["modes"], "ms_per_call": round(ms, 2)}


def run(out: str = "runs/demo", steps: int = 2000, seed: int = 0, n: int = 2000) -> list[dict]:
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # tiny networks: one thread is fastest
    os.makedirs(out, exist_ok=True)
    bounds = dict(x_max=torch.ones(1, 2), x_min=-torch.ones(1, 2), ema_rate=0.99, optim_params={"lr": 1e-3})
    t0 = time.perf_counter()
    edm = _train(ContinuousEDM(_net(), **bounds), steps, "EDM teacher")
    cd = ContinuousConsistencyModel(_net(), **bounds)
    cd.prepare_distillation(edm, distillation_N=18)
    _train(cd, steps // 2, "consistency distillation", loss_type="distillation")
    # CT has no teacher: it gets twice the steps, and a short curriculum (s1 = 80) suits a short run
    ct = _train(ContinuousConsistencyModel(
        _net(timestep_emb_type="untrainable_fourier", timestep_emb_params={"scale": 0.02}),
        s1=80, curriculum_cycle=2 * steps, **bounds), 2 * steps, "consistency training")
    train_s = time.perf_counter() - t0

    data, _ = gaussian_ring(n, generator=torch.Generator().manual_seed(2))
    runs = [("EDM Euler", edm, dict(sample_steps=20)), ("EDM Euler", edm, dict(sample_steps=1)),
            ("CD", cd, dict(sample_steps=1)), ("CD", cd, dict(sample_steps=2)),
            ("CT", ct, dict(sample_steps=1)), ("CT", ct, dict(sample_steps=2))]
    samples, rows = {}, []
    for name, model, kw in runs:
        x, row = _evaluate(name, model, n, **kw)
        samples[f"{name}, NFE {row['nfe']}"] = x
        rows.append(row)
    for name, model in (("edm", edm), ("cd", cd), ("ct", ct)):
        model.save(os.path.join(out, f"{name}.ckpt"))
    _plot(data, samples, os.path.join(out, "samples.png"))
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"train_seconds": round(train_s, 1), "steps": steps, "seed": seed, "rows": rows}, f, indent=2)
    return rows


def _plot(data, samples, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("data", data)] + list(samples.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8))
    for ax, (title, x) in zip(axes, panels):
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-1.05, 1.05), ax.set_ylim(-1.05, 1.05), ax.set_aspect("equal"), ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(rows: list[dict]) -> str:
    head = f"{'model':<10} {'NFE':>4} {'sliced W1':>10} {'near mode':>10} {'modes':>6} {'ms/call':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<10} {r['nfe']:>4} {r['sliced_wasserstein']:>10.4f} {r['near_mode']:>10.3f} "
                     f"{r['modes_covered']:>6} {r['ms_per_call']:>8.2f}")
    return "\n".join(lines)
