"""Compiled training updates before and after the session-4 changes, in one process, interleaved.

    python benchmarks/bench_compiled_step.py [--threads 1] [--rounds 12] [--models EDM CT CD "DDPM (T=5)"]

"before": the network alone compiled (`torch.compile` of the denoiser module) with Inductor's Philox dropout.
"after": the current code: dropout masks from an integer hash inside compiled graphs
(cleandiffuser.utils.activations.dropout), and the family's whole loss compiled as one graph
(DiffusionModel.compiled_losses: a consistency model's online and target passes and CD's teacher step since
session 4, EDM's and DDPM's denoising losses since sessions 5 and 6).
Both start from the same weights (IDQLMlp(17, 6), batch 256, bf16 autocast) and are timed in alternating
chunks of 10 updates; medians of wall and process CPU time per update. On a shared machine the CPU time is the
steadier of the two (with 1 thread it is this process's own work; wall time includes waiting for a core).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import ACT, BATCH, OBS, make  # noqa: E402

from cleandiffuser.nn_diffusion import idqlmlp  # noqa: E402
from cleandiffuser.utils.activations import mish  # noqa: E402


class _PhiloxBlock(idqlmlp._LNResBlock):
    """The block as it was: F.dropout, which Inductor lowers to one Philox draw per element."""

    def forward(self, h):
        y = F.dropout(h, self.dropout, True) if self.training and self.dropout > 0 else h
        return h + self.fc2(mish(self.fc1(self.norm(y))))


def build(kind, before: bool):
    torch.manual_seed(0)
    model, kw = make(kind, "bf16")
    if before:
        for m in model.modules():
            if isinstance(m, idqlmlp._LNResBlock):
                m.__class__ = _PhiloxBlock
        model.compiled_losses = ()  # compile the network module only
    return model.compile_network().train(), kw


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--models", nargs="+", default=["EDM", "CT", "CD", "DDPM (T=5)"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    obs, act = torch.randn(BATCH, OBS), torch.rand(BATCH, ACT) * 2 - 1
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds of 10 updates each\n")
    print(f"{'model':<11} {'wall ms before':>14} {'after':>7} {'speedup':>8} {'cpu ms before':>14} {'after':>7} "
          f"{'speedup':>8}")
    for kind in args.models:
        models = {name: build(kind, name == "before") for name in ("before", "after")}
        wall = {k: [] for k in models}
        cpu = {k: [] for k in models}
        for model, kw in models.values():  # compile and warm up
            for _ in range(5):
                model.update(act, obs, **kw)
        for r in range(args.rounds):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                model, kw = models[name]
                t, c = time.perf_counter(), time.process_time()
                for _ in range(10):
                    model.update(act, obs, **kw)
                wall[name].append((time.perf_counter() - t) * 100)
                cpu[name].append((time.process_time() - c) * 100)
        w = {k: statistics.median(v) for k, v in wall.items()}
        c = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"{kind:<11} {w['before']:>14.1f} {w['after']:>7.1f} {w['before'] / w['after']:>8.2f} "
              f"{c['before']:>14.2f} {c['after']:>7.2f} {c['before'] / c['after']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
