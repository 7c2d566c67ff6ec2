"""The seed tutorials' API on a bimodal contextual bandit with known modes: how precisely does it learn?

    python experiments/seed_api_bandit.py [--seeds 0 1 2] [--updates 6000] [--cd-updates 3000] [ablation flags]

The script follows seed tutorial 000 exactly: IDQLMlp(obs_dim, act_dim, emb_dim=64,
timestep_emb_type="untrainable_fourier"), IdentityCondition(dropout=0.0), ContinuousEDM with
optim_params={"lr": 3e-4}, ema_rate=0.995 and x bounds [-1, 1], data through D4RLMuJoCoTDDataset +
DataLoader(batch 64, shuffle) + loop_dataloader; then ContinuousConsistencyModel.prepare_distillation(edm,
distillation_N=18) and `update(..., loss_type="distillation")`.

Bandit: observation o ~ U(-1, 1)^2; the action has two equally likely modes
m(o) = +-0.55 (cos(pi o_0), sin(pi o_0)) + 0.2 o_1 (1, 1) with isotropic std 0.04 (clipped to [-1, 1]).
Precision = share of samples (one per fresh test observation) within 0.15 (Euclidean) of a true mode;
a perfect sampler scores ~0.999. `balance` = share of the precise samples at the + mode (0.5 is ideal).

Every run appends a JSON line to --out (default results/seed-api-bandit/runs.jsonl) and is skipped when a
line with the same configuration and seed is there already, so an interrupted sweep resumes; the table
printed at the end is over the runs of this invocation's configuration (mean +- SE over seeds).

Ablation flags change one thing at a time against the library's defaults (a flag left out passes nothing,
so the library default applies): --weight-decay, --no-ema-warmup, --no-time-mlp, --dropout, --fourier-scale,
--teacher-solver, --cd-target, --cd-distance, --cd-clip, --precision. The script imports `cleandiffuser`
only through the seed API, so it runs unchanged on any library that provides that API.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cleandiffuser.dataset.d4rl_mujoco_dataset import D4RLMuJoCoTDDataset
from cleandiffuser.dataset.dataset_utils import loop_dataloader
from cleandiffuser.diffusion import ContinuousEDM
from cleandiffuser.diffusion.consistency_model import ContinuousConsistencyModel
from cleandiffuser.nn_condition import IdentityCondition
from cleandiffuser.nn_diffusion import IDQLMlp

ROOT = Path(__file__).resolve().parents[1]
OBS_DIM, ACT_DIM, MODE_STD, RADIUS = 2, 2, 0.04, 0.15

EDM_SAMPLERS = (("euler", 4), ("heun", 20))
CD_STEPS = (1, 2, 4)


# ---------------------------------------------------------------------------------------------- the bandit
def modes(obs: np.ndarray) -> np.ndarray:
    """(N, 2 modes, act_dim) mode centres of observations (N, 2)."""
    d = 0.55 * np.stack([np.cos(np.pi * obs[:, 0]), np.sin(np.pi * obs[:, 0])], -1)
    shift = 0.2 * obs[:, 1:2] * np.ones((1, ACT_DIM))
    return np.stack([shift + d, shift - d], 1)


def bandit_data(n: int, seed: int) -> dict:
    """A d4rl.qlearning_dataset-style dict of n one-step transitions."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, OBS_DIM)).astype(np.float32)
    which = rng.integers(0, 2, n)
    act = modes(obs)[np.arange(n), which] + MODE_STD * rng.standard_normal((n, ACT_DIM))
    return {"observations": obs, "next_observations": obs.copy(), "actions": np.clip(act, -1, 1).astype(np.float32),
            "rewards": np.zeros(n, np.float32), "terminals": np.ones(n, np.float32)}


def precision(act: np.ndarray, obs: np.ndarray) -> tuple[float, float]:
    """(share within RADIUS of a mode, share of those at the + mode)."""
    dist = np.linalg.norm(act[:, None, :] - modes(obs), axis=-1)  # (N, 2)
    near = dist.min(1) < RADIUS
    plus = (dist[:, 0] < dist[:, 1]) & near
    return float(near.mean()), float(plus.sum() / max(1, near.sum()))


# ---------------------------------------------------------------------------------------------- one run
def make_net(args):
    params = {} if args.fourier_scale is None else {"timestep_emb_params": {"scale": args.fourier_scale}}
    if args.dropout is not None:
        params["dropout"] = args.dropout
    if args.no_time_mlp:
        params["time_mlp"] = False
    return IDQLMlp(OBS_DIM, ACT_DIM, emb_dim=64, timestep_emb_type="untrainable_fourier", **params)


def model_kwargs(args, ema_rate: float) -> dict:
    optim = {"lr": 3e-4}
    if args.weight_decay is not None:
        optim["weight_decay"] = args.weight_decay
    kw = dict(optim_params=optim, x_max=+1. * torch.ones((1, ACT_DIM)), x_min=-1. * torch.ones((1, ACT_DIM)),
              ema_rate=ema_rate, device="cpu")
    if args.no_ema_warmup:
        kw["ema_warmup"] = False
    if args.precision is not None:
        kw["precision"] = args.precision
    return kw


def evaluate(sample, n_eval: int, normalizer, seed: int) -> float:
    rng = np.random.default_rng(10_000 + seed)
    obs = rng.uniform(-1, 1, (n_eval, OBS_DIM)).astype(np.float32)
    cond = torch.as_tensor(normalizer.normalize(obs), dtype=torch.float32)
    with torch.no_grad():
        act = sample(cond).cpu().numpy()
    return precision(act, obs)


def run(args, seed: int) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    dataset = D4RLMuJoCoTDDataset(bandit_data(args.data, 1000 + seed), False)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=0, drop_last=True)
    normalizer = dataset.get_normalizer()
    prior = torch.zeros((args.n_eval, ACT_DIM))
    out = {"seed": seed}

    edm = ContinuousEDM(make_net(args), IdentityCondition(dropout=0.0), **model_kwargs(args, args.ema_rate))
    teacher = args.teacher_dir / f"edm_seed{seed}.pt" if args.teacher_dir is not None else None
    if teacher is not None and teacher.exists():  # reuse a saved EDM (CD ablations from one teacher)
        edm.load(teacher)
        out["edm_s"] = float("nan")
    else:
        edm.train()
        t0 = time.perf_counter()
        for n, batch in enumerate(loop_dataloader(loader)):
            if n >= args.updates:
                break
            edm.update(batch["act"], batch["obs"]["state"])
        out["edm_s"] = time.perf_counter() - t0
        if teacher is not None:
            teacher.parent.mkdir(parents=True, exist_ok=True)
            edm.save(teacher)
    edm.eval()
    for solver, steps in EDM_SAMPLERS:
        out[f"edm_{solver}{steps}"], out[f"edm_{solver}{steps}_bal"] = evaluate(
            lambda c: edm.sample(prior, solver=solver, n_samples=args.n_eval, sample_steps=steps, use_ema=True,
                                 condition_cfg=c, w_cfg=1.0)[0], args.n_eval, normalizer, seed)

    if args.cd_updates > 0:
        cd = ContinuousConsistencyModel(make_net(args), IdentityCondition(dropout=0.0),
                                        **model_kwargs(args, args.cd_ema_rate))
        cd_kwargs = {}
        for name in ("teacher_solver", "cd_target", "cd_distance", "cd_clip"):
            if getattr(args, name) is not None:
                cd_kwargs[name.replace("cd_", "")] = getattr(args, name)
        cd.prepare_distillation(edm, distillation_N=18, **cd_kwargs)
        cd.train()
        t0 = time.perf_counter()
        for n, batch in enumerate(loop_dataloader(loader)):
            if n >= args.cd_updates:
                break
            cd.update(batch["act"], batch["obs"]["state"], loss_type="distillation")
        out["cd_s"] = time.perf_counter() - t0
        cd.eval()
        for steps in CD_STEPS:
            out[f"cd_{steps}"], out[f"cd_{steps}_bal"] = evaluate(
                lambda c: cd.sample(prior, n_samples=args.n_eval, sample_steps=steps, use_ema=True,
                                    condition_cfg=c, w_cfg=1.0)[0], args.n_eval, normalizer, seed)
    return out


# ---------------------------------------------------------------------------------------------- CLI
CONFIG_KEYS = ("no_time_mlp", "updates", "cd_updates", "batch", "data", "n_eval", "ema_rate", "cd_ema_rate",
               "weight_decay", "no_ema_warmup", "dropout", "fourier_scale", "teacher_solver", "cd_target",
               "cd_distance", "cd_clip", "precision", "label")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--updates", type=int, default=6000, help="EDM updates")
    ap.add_argument("--cd-updates", type=int, default=3000, help="consistency-distillation updates (0: no CD)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--data", type=int, default=50_000, help="transitions in the bandit's dataset")
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--ema-rate", type=float, default=0.995)
    ap.add_argument("--cd-ema-rate", type=float, default=0.995)
    ap.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the library's)")
    ap.add_argument("--no-ema-warmup", action="store_true", help="ema_warmup=False (this library only)")
    ap.add_argument("--dropout", type=float, default=None, help="IDQLMlp dropout (default: the library's)")
    ap.add_argument("--no-time-mlp", action="store_true",
                    help="IDQLMlp(time_mlp=False): raw Fourier features (the layout before issue 45)")
    ap.add_argument("--teacher-dir", type=Path, default=None,
                    help="save the EDM of each seed here, or load it if saved (train CD variants from one teacher)")
    ap.add_argument("--fourier-scale", type=float, default=None, help="untrainable_fourier scale")
    ap.add_argument("--teacher-solver", choices=("euler", "heun"), default=None, help="CD teacher step")
    ap.add_argument("--cd-target", choices=("ema", "online"), default=None, help="CD target network")
    ap.add_argument("--cd-distance", choices=("l2", "pseudo_huber"), default=None, help="CD distance")
    ap.add_argument("--cd-clip", type=int, choices=(0, 1), default=None, help="clip f to the bounds in the CD loss")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None)
    ap.add_argument("--label", default="", help="a name for this configuration in the records")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "seed-api-bandit" / "runs.jsonl")
    return ap.parse_args(argv)


def summarize(rows: list[dict]) -> list[str]:
    keys = [k for k in rows[0] if k.startswith(("edm_", "cd_")) and not k.endswith(("_bal", "_s"))]
    lines = ["| model, sampler | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | mean +- SE |",
             "|---|" + "---|" * (len(rows) + 1)]
    for k in keys + ["edm_s", "cd_s"]:
        if k not in rows[0]:
            continue
        v = np.array([r[k] for r in rows])
        se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
        lines.append(f"| {k} | " + " | ".join(f"{x:.3f}" if k[-2:] != "_s" else f"{x:.0f}" for x in v)
                     + f" | {v.mean():.3f} +- {se:.3f} |")
    return lines


def main(argv=None) -> list[dict]:
    args = parse(argv)
    torch.set_num_threads(1)
    config = {k: getattr(args, k) for k in CONFIG_KEYS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            rec = json.loads(line)
            if rec["config"] == config:
                done[rec["result"]["seed"]] = rec["result"]
    rows = []
    for seed in args.seeds:
        if seed not in done:
            result = run(args, seed)
            with args.out.open("a") as f:
                f.write(json.dumps({"config": config, "result": result}) + "\n")
            done[seed] = result
        rows.append(done[seed])
        print(json.dumps(done[seed]), flush=True)
    print(f"config: {config}")
    print("\n".join(summarize(rows)))
    return rows


if __name__ == "__main__":
    main()
