"""Training speed of the imitation policies (ChiUNet1d action-chunk models, the Can low-dim config of
imitation/edm_lift.yaml at batch 64), fp32 against bf16 autocast, next to the machine's floor.

    python benchmarks/bench_imitation_train.py [--threads 1] [--seconds 3] [--policies ctm-ode4 ...] 2>&1 | grep -v USDT

"bf16 oneDNN" is the previous version: bf16 autocast with every convolution on oneDNN's path, where "bf16" computes
the stride-1 convolutions as patch matmuls (cleandiffuser.nn_diffusion.conv.GemmConv1d). "edm-dp" is the teacher at
Diffusion Policy's own U-Net widths. "GFLOP/update" is counted by torch.utils.flop_counter over one whole update
(forward, backward, teacher passes of a student); "floor" is the update rate those FLOPs allow at the measured bf16
matmul peak. "conv bwd share" is the fraction of a bf16 update's CPU time in convolution backward passes
(aten::convolution_backward, and GemmConv1dBackward with its ops). Times are the best of 5 chunks (bench_core.timeit).
"""
import argparse

import torch
from omegaconf import OmegaConf
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from bench_core import matmul_peak, timeit
from cleandiffuser.imitation.policy import ChunkPolicy
from cleandiffuser.nn_diffusion import conv

CONFIG = "cleandiffuser/configs/imitation/edm_lift.yaml"
BATCH = 64
POLICIES = ["edm", "ddim", "ctm-ode1", "ctm-ode4", "edm-dp"]


def make(kind: str, precision: str, teacher: ChunkPolicy | None = None) -> ChunkPolicy:
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG))
    cfg["shape_meta"]["obs"]["object"]["shape"] = [14]  # Can / Square
    cfg["precision"] = precision
    if kind == "edm-dp":  # Diffusion Policy's own U-Net widths
        kind = "edm"
        cfg["policy"]["down_dims"] = [256, 512, 1024]
    if kind.startswith("ctm"):
        cfg["policy"].update(kind="ctm", ode_steps_max=int(kind.removeprefix("ctm-ode")), dropout=0.0)
        cfg["policy"]["noise_scheduler"]["bins"] = 20
        return ChunkPolicy.from_config(cfg, teacher=teacher, edm=teacher)
    cfg["policy"]["kind"] = kind
    return ChunkPolicy.from_config(cfg)


def batch_for(policy: ChunkPolicy) -> dict:
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.randn(BATCH, policy.n_obs_steps, *v["shape"], generator=g)
           for k, v in policy.shape_meta["obs"].items()}
    return {"obs": obs, "action": torch.rand(BATCH, policy.horizon, policy.action_dim, generator=g) * 2 - 1}


def conv_backward_share(policy: ChunkPolicy, batch: dict) -> float:
    with profile() as prof:
        for _ in range(5):
            policy.update(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total if e.key == "aten::convolution_backward" else e.cpu_time_total
               for e in events if e.key in ("aten::convolution_backward", "GemmConv1dBackward")) / total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--policies", nargs="+", choices=POLICIES, default=POLICIES)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak(torch.bfloat16, args.seconds)
    print(f"torch {torch.__version__}, {args.threads} thread(s); bf16 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"batch {BATCH}\n")
    print(f"{'policy':<12}{'GFLOP/update':>13}{'fp32 upd/s':>12}{'bf16 oneDNN':>13}{'bf16 upd/s':>12}{'floor':>8}"
          f"{'conv bwd share':>16}")
    teacher = make("edm", "fp32")
    for kind in args.policies:
        rates = {}
        for precision, gemm in (("fp32", True), ("bf16 oneDNN", False), ("bf16", True)):
            conv.BF16_GEMM = gemm
            policy = make(kind, precision.split()[0], teacher)
            batch = batch_for(policy)
            rates[precision] = 1 / timeit(lambda: policy.update(batch), args.seconds)
        with FlopCounterMode(display=False) as counter:
            policy.update(batch)
        flops = counter.get_total_flops()
        share = conv_backward_share(policy, batch)
        print(f"{kind:<12}{flops / 1e9:>13.2f}{rates['fp32']:>12.2f}{rates['bf16 oneDNN']:>13.2f}{rates['bf16']:>12.2f}"
              f"{peak / flops:>8.1f}{share:>16.0%}", flush=True)


if __name__ == "__main__":
    main()
