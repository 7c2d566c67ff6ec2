"""Training and sampling speed of every generative model with the IDQLMlp backbone (obs 17, act 6,
batch 256), next to the machine's floor (network FLOPs / measured matmul peak).

    python benchmarks/bench_core.py [--threads 2] [--seconds 3] [--tables training sampling]

Prints two tables. "+compile" is bf16 with DiffusionModel.compile_network(). "floor" is the update rate the matmuls alone would allow at the measured peak
(network passes per update x forward FLOPs / peak). Times are the best of 5 chunks.
"""
import argparse
import time

import torch
import torch.nn as nn

from cleandiffuser.diffusion import (ConsistencyTrajectoryModel, ContinuousConsistencyModel, ContinuousEDM,
                                     ContinuousRectifiedFlow, DiscreteDiffusionSDE)
from cleandiffuser.nn_condition import IdentityCondition
from cleandiffuser.nn_diffusion import IDQLMlp

OBS, ACT, BATCH = 17, 6, 256


def matmul_peak(dtype, seconds):
    a, b = torch.randn(256, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    return 2 * 256 * 1024 * 1024 / timeit(lambda: a @ b, seconds)


def timeit(fn, seconds, chunks=5):
    """Best of `chunks` timings of about seconds / chunks each: robust to a busy machine."""
    fn()
    best = float("inf")
    for _ in range(chunks):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / chunks or n < 3:
            fn()
            n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def timeit_pair(fn_a, fn_b, seconds, chunks=5):
    """Best-of timings of two functions measured in alternating chunks, so that a slow phase of a shared
    machine does not fall on one of them only."""
    best_a, best_b = float("inf"), float("inf")
    for _ in range(chunks):
        best_a = min(best_a, timeit(fn_a, seconds / chunks, chunks=1))
        best_b = min(best_b, timeit(fn_b, seconds / chunks, chunks=1))
    return best_a, best_b


def forward_flops(net: nn.Module, batch: int) -> float:
    return sum(2 * m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear)) * batch


def make(kind, precision):
    net = lambda **kw: IDQLMlp(OBS, ACT, **kw)  # noqa: E731
    common = dict(optim_params={"lr": 3e-4}, x_max=torch.ones(1, ACT), x_min=-torch.ones(1, ACT),
                  precision=precision)
    if kind == "DDPM (T=5)":
        return DiscreteDiffusionSDE(net(), IdentityCondition(dropout=0.0), diffusion_steps=5, **common), {}
    if kind == "EDM":
        return ContinuousEDM(net(), IdentityCondition(dropout=0.0), **common), {}
    if kind == "RF":
        return ContinuousRectifiedFlow(net(), IdentityCondition(dropout=0.0), **common), {}
    if kind == "CT":
        return ContinuousConsistencyModel(net(timestep_emb_type="untrainable_fourier",
                                              timestep_emb_params={"scale": 0.02}),
                                          IdentityCondition(dropout=0.0), **common), {}
    teacher = ContinuousEDM(net(), IdentityCondition(dropout=0.0), **common)
    if kind == "CD":
        cm = ContinuousConsistencyModel(net(), IdentityCondition(dropout=0.0), **common)
        return cm.prepare_distillation(teacher, distillation_N=18), {"loss_type": "distillation"}
    ctm = ConsistencyTrajectoryModel(net(), IdentityCondition(dropout=0.0), **common)
    return ctm.prepare_distillation(teacher), {}


# network passes per update, counted as forward-equivalents (a backward is two)
PASSES = {"DDPM (T=5)": 3, "EDM": 3, "RF": 3, "CT": 4, "CD": 4 + 4, "CTM": 2 * 3 + 2 + 4 + 1 + 2}
NFES = {"DDPM (T=5)": [5], "EDM": [1, 2, 4], "RF": [1, 2, 4], "CT": [1, 2, 4], "CD": [1, 2, 4], "CTM": [1, 2, 4]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--tables", nargs="+", choices=("training", "sampling"), default=["training", "sampling"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peak = {"fp32": matmul_peak(torch.float32, args.seconds), "bf16": matmul_peak(torch.bfloat16, args.seconds)}
    flops = forward_flops(IDQLMlp(OBS, ACT), BATCH)
    print(f"torch {torch.__version__}, {args.threads} threads; matmul peak fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s; IDQLMlp forward at batch {BATCH}: {flops / 1e9:.3f} GFLOP\n")

    obs, act = torch.randn(BATCH, OBS), torch.rand(BATCH, ACT) * 2 - 1
    if "training" in args.tables:
        training_table(obs, act, peak, flops, args.seconds)
    if "sampling" in args.tables:
        sampling_table(obs, args.seconds)


def training_table(obs, act, peak, flops, seconds):
    print(f"{'model':<11} {'fp32 upd/s':>10} {'floor':>7} {'bf16 upd/s':>10} {'+compile':>9} {'floor':>7}")
    for kind in PASSES:
        row = f"{kind:<11}"
        for precision, compiled in (("fp32", False), ("bf16", False), ("bf16", True)):
            model, kw = make(kind, precision)
            if compiled:
                model.compile_network()
            model.train()
            sec = timeit(lambda: model.update(act, obs, **kw), seconds)
            row += f" {1 / sec:>{9 if compiled else 10}.1f}"
            if precision == "fp32" or compiled:
                row += f" {peak[precision] / (PASSES[kind] * flops):>7.0f}"
        print(row, flush=True)
    print()


def sampling_table(obs, seconds):
    print(f"{'model':<11} {'NFE':>4} {'ms @ batch 1':>13} {'x raw fwd':>10} {'ms @ batch 256':>15} {'auto @ 256':>11}")
    for kind, nfes in NFES.items():
        model, _ = make(kind, "fp32")
        model.eval()
        auto, _ = make(kind, "auto")  # bf16 autocast for batches >= 64 where the CPU is fast at it
        auto.load_state_dict(model.state_dict())
        auto.eval()
        net, x1, o1 = model.model_ema["diffusion"], torch.zeros(1, ACT), obs[:1]
        noise = torch.ones(1, 2) if kind == "CTM" else torch.ones(1)
        def raw_forward():  # one raw forward of the same network: the floor for one-step sampling
            with torch.no_grad():
                net(x1, noise, o1)

        for nfe in nfes:
            kw = dict(sample_steps=nfe)
            raw, one = timeit_pair(raw_forward, lambda: model.sample(x1, condition_cfg=o1, **kw), seconds)
            full, full_auto = timeit_pair(lambda: model.sample(torch.zeros(BATCH, ACT), condition_cfg=obs, **kw),
                                          lambda: auto.sample(torch.zeros(BATCH, ACT), condition_cfg=obs, **kw),
                                          seconds)
            print(f"{kind:<11} {nfe:>4} {one * 1000:>13.3f} {one / raw:>10.2f} {full * 1000:>15.2f} "
                  f"{full_auto * 1000:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
