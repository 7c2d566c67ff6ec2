"""Training speed of the imitation policies (ChiUNet1d action-chunk models, the Can low-dim config of
imitation/edm_lift.yaml at batch 64), fp32 against bf16 autocast, next to the machine's floor.

    python benchmarks/bench_imitation_train.py [--threads 1] [--seconds 3] 2>&1 | grep -v USDT

"GFLOP/update" is counted by torch.utils.flop_counter over one whole update (forward, backward, teacher passes of a
student); "floor" is the update rate those FLOPs allow at the measured bf16 matmul peak. "conv bwd share" is the
fraction of a bf16 update's CPU time spent in aten::convolution_backward (torch.profiler), the part bf16 does not
speed up on this CPU. Times are the best of 5 chunks (bench_core.timeit).
"""
import argparse

import torch
from omegaconf import OmegaConf
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from bench_core import matmul_peak, timeit
from cleandiffuser.imitation.policy import ChunkPolicy

CONFIG = "cleandiffuser/configs/imitation/edm_lift.yaml"
BATCH = 64


def make(kind: str, precision: str, teacher: ChunkPolicy | None = None) -> ChunkPolicy:
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG))
    cfg["shape_meta"]["obs"]["object"]["shape"] = [14]  # Can / Square
    cfg["precision"] = precision
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
    return sum(e.self_cpu_time_total for e in events if e.key == "aten::convolution_backward") / total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak(torch.bfloat16, args.seconds)
    print(f"torch {torch.__version__}, {args.threads} thread(s); bf16 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"batch {BATCH}\n")
    print(f"{'policy':<12}{'GFLOP/update':>13}{'fp32 upd/s':>12}{'bf16 upd/s':>12}{'floor':>8}{'conv bwd share':>16}")
    teacher = make("edm", "fp32")
    for kind in ("edm", "ddim", "ctm-ode1", "ctm-ode4"):
        rates = {}
        for precision in ("fp32", "bf16"):
            policy = make(kind, precision, teacher)
            batch = batch_for(policy)
            rates[precision] = 1 / timeit(lambda: policy.update(batch), args.seconds)
        with FlopCounterMode(display=False) as counter:
            policy.update(batch)
        flops = counter.get_total_flops()
        share = conv_backward_share(policy, batch)
        print(f"{kind:<12}{flops / 1e9:>13.2f}{rates['fp32']:>12.1f}{rates['bf16']:>12.1f}{peak / flops:>8.1f}"
              f"{share:>16.0%}", flush=True)


if __name__ == "__main__":
    main()
