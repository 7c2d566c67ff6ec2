"""The CPU fast paths against the stock PyTorch ops they replace, timed in alternating chunks.

    python benchmarks/bench_ops.py [--threads 2] [--seconds 2]

Prints three tables: Mish forward + backward (eager F.mish vs the fused kernel), 1-D convolutions at batch 1
(stock vs the channels-last path of cleandiffuser.nn_diffusion.conv, 1 thread), and one-step sampling per
batch size with fp32 vs bf16 autocast (why DiffusionModel samples under autocast only from 64 samples).
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import timeit_pair  # noqa: E402

from cleandiffuser.diffusion import ContinuousConsistencyModel  # noqa: E402
from cleandiffuser.nn_condition import IdentityCondition  # noqa: E402
from cleandiffuser.nn_diffusion import IDQLMlp  # noqa: E402
from cleandiffuser.nn_diffusion.conv import Conv1d, ConvTranspose1d  # noqa: E402
from cleandiffuser.utils.activations import mish  # noqa: E402


def mish_table(seconds):
    print(f"{'Mish fwd+bwd':<22}{'dtype':>10}{'eager ms':>10}{'fused ms':>10}")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(256, 1024, dtype=dtype).requires_grad_()
        g = torch.randn(256, 1024, dtype=dtype)
        eager, fused = timeit_pair(lambda: F.mish(x).backward(g), lambda: mish(x).backward(g), seconds)
        print(f"{'256 x 1024':<22}{str(dtype)[6:]:>10}{eager * 1e3:>10.3f}{fused * 1e3:>10.3f}")


def conv_table(seconds):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"\n{'conv, batch 1, 1 thread':<34}{'stock us':>10}{'fast us':>10}")
    cases = [(Conv1d, torch.nn.Conv1d, dict(kernel_size=5, padding=2), c, length)
             for c, length in ((256, 4), (128, 8), (64, 16))]
    cases.append((ConvTranspose1d, torch.nn.ConvTranspose1d, dict(kernel_size=4, stride=2, padding=1), 256, 4))
    with torch.no_grad():
        for cls, stock_cls, kw, c, length in cases:
            stock, fast = stock_cls(c, c, **kw), cls(c, c, **kw)
            fast.load_state_dict(stock.state_dict())
            x = torch.randn(1, c, length)
            a, b = timeit_pair(lambda: stock(x), lambda: fast(x), seconds)
            print(f"{f'{stock_cls.__name__} C={c} L={length}':<34}{a * 1e6:>10.0f}{b * 1e6:>10.0f}")
    torch.set_num_threads(threads)


def sampling_table(seconds):
    print(f"\n{'one-step CT sampling':<22}{'batch':>6}{'fp32 ms':>10}{'bf16 ms':>10}")
    model = ContinuousConsistencyModel(IDQLMlp(17, 6), IdentityCondition(dropout=0.0), precision="fp32").eval()
    for batch in (1, 16, 64, 256):
        x, obs = torch.zeros(batch, 6), torch.randn(batch, 17)

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model.sample(x, condition_cfg=obs, sample_steps=1)

        a, b = timeit_pair(lambda: model.sample(x, condition_cfg=obs, sample_steps=1), bf16, seconds)
        print(f"{'':<22}{batch:>6}{a * 1e3:>10.3f}{b * 1e3:>10.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    mish_table(args.seconds)
    conv_table(args.seconds)
    sampling_table(args.seconds)


if __name__ == "__main__":
    main()
