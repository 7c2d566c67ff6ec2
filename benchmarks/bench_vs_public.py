"""Training speed against the public implementation's update, re-created in plain PyTorch and timed in the
same process, so that the issue's "2x the public implementation" is read on one machine at one moment
(this VM's speed drifts by 1.3x between runs; the public figures in ../shared/reference/machine.md were taken
on another VM).

    python benchmarks/bench_vs_public.py [--threads 2] [--seconds 6] [--models EDM "DDPM (T=5)" CT CD]

"public-style" is what the public CleanDiffuser does per update (../shared/reference/cleandiffuser.md
sections 1-2): its IDQLMlp (eager nn.Mish, nn.Dropout 0.1, positional time embedding), fp32, AdamW with
torch's default (foreach) kernels, then an EMA update written as a Python loop over parameters; EDM,
DDPM (T=5, cosine, eps-prediction), improved CT, and CD with its one Euler teacher step and EMA target.
"ours" is this library's model doing the same work (CD: teacher_solver="euler", the public step; our default
is Heun, one teacher pass more), eager fp32 and then bf16 autocast with compile_network().
The three are timed in alternating chunks; each column is the best chunk.
"""
import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import ACT, BATCH, OBS, make, timeit  # noqa: E402

# ------------------------------------------------------------------ the public implementation's update


class PublicIDQLMlp(nn.Module):
    """IDQL's LN-ResNet as the public code builds it: nn.Sequential blocks with eager Mish and Dropout."""

    def __init__(self, obs_dim, act_dim, emb_dim=64, hidden=256, n_blocks=3, dropout=0.1):
        super().__init__()
        self.register_buffer("freqs", (1 / 10000) ** (torch.arange(emb_dim // 2) / (emb_dim // 2)))
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim * 2), nn.Mish(), nn.Linear(emb_dim * 2, emb_dim))
        self.affine_in = nn.Linear(obs_dim + act_dim + emb_dim, hidden)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Dropout(dropout), nn.LayerNorm(hidden),
                                                    nn.Linear(hidden, hidden * 4), nn.Mish(),
                                                    nn.Linear(hidden * 4, hidden)) for _ in range(n_blocks)])
        self.affine_out = nn.Linear(hidden, act_dim)

    def forward(self, x, noise, condition):
        e = (1000 * noise)[:, None] * self.freqs[None]
        h = self.affine_in(torch.cat([x, self.time_mlp(torch.cat([e.cos(), e.sin()], -1)), condition], -1))
        for block in self.blocks:
            h = h + block(h)
        return self.affine_out(F.mish(h))


class PublicStyle:
    """One update of the public DiffusionModel: loss, backward, AdamW step, zero_grad, EMA loop."""

    SD, SMIN, SMAX, RHO = 0.5, 0.002, 80.0, 7.0

    def __init__(self, kind):
        torch.manual_seed(0)
        self.kind = kind
        self.net = PublicIDQLMlp(OBS, ACT)
        self.ema = PublicIDQLMlp(OBS, ACT).requires_grad_(False)
        self.ema.load_state_dict(self.net.state_dict())
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=2e-4, weight_decay=1e-5)
        self.teacher = PublicIDQLMlp(OBS, ACT).requires_grad_(False) if kind == "CD" else None
        t = torch.arange(6) / 5  # DDPM T=5 cosine table
        s = 0.008
        self.alpha = torch.cos(math.pi / 2 * (t.clamp(max=0.9946) + s) / (1 + s)) / math.cos(math.pi / 2 * s / (1 + s))
        n = 10 if kind == "CT" else 18  # CT at the start of its curriculum; CD's distillation_N
        i = torch.arange(n + 1) / n
        self.grid = (self.SMIN ** (1 / self.RHO) + i * (self.SMAX ** (1 / self.RHO) - self.SMIN ** (1 / self.RHO))) ** self.RHO
        lo, hi = self.grid[:-1].log(), self.grid[1:].log()
        self.pair_p = torch.erf((hi + 1.1) / (math.sqrt(2) * 2.0)) - torch.erf((lo + 1.1) / (math.sqrt(2) * 2.0))

    def edm_denoise(self, net, x, s, obs):
        s = s[:, None]
        c_skip, c_out = self.SD ** 2 / (s ** 2 + self.SD ** 2), s * self.SD / (s ** 2 + self.SD ** 2).sqrt()
        return c_skip * x + c_out * self.net_in(net, x, s, obs)

    def consistency(self, net, x, s, obs):
        s = s[:, None]
        c_skip = self.SD ** 2 / (self.SD ** 2 + (s - self.SMIN) ** 2)
        c_out = (s - self.SMIN) * self.SD / (self.SD ** 2 + s ** 2).sqrt()
        return c_skip * x + c_out * self.net_in(net, x, s, obs)

    def net_in(self, net, x, s, obs):
        """F(c_in x, ln(s) / 4) with s of shape (B, 1), as EDM and the consistency model call it."""
        return net(x / (s ** 2 + self.SD ** 2).sqrt(), s.squeeze(1).log() / 4, obs)

    def loss(self, x0, obs):
        if self.kind == "EDM":
            s = (torch.randn(x0.shape[0]) * 1.2 - 1.2).exp()
            d = self.edm_denoise(self.net, x0 + s[:, None] * torch.randn_like(x0), s, obs)
            w = (s ** 2 + self.SD ** 2) / (s * self.SD) ** 2
            return (w[:, None] * (d - x0) ** 2).mean()
        if self.kind == "DDPM (T=5)":
            t = torch.randint(1, 6, (x0.shape[0],))
            a = self.alpha[t][:, None]
            eps = torch.randn_like(x0)
            return ((self.net(a * x0 + (1 - a ** 2).sqrt() * eps, t / 5, obs) - eps) ** 2).mean()
        i = torch.multinomial(self.pair_p, x0.shape[0], replacement=True) if self.kind == "CT" else \
            torch.randint(0, len(self.grid) - 1, (x0.shape[0],))
        s_lo, s_hi = self.grid[i], self.grid[i + 1]
        x_hi = x0 + s_hi[:, None] * torch.randn_like(x0)
        online = self.consistency(self.net, x_hi, s_hi, obs)
        with torch.no_grad():
            if self.kind == "CT":  # improved CT: the online weights under stop-gradient
                target = self.consistency(self.net, x0 + s_lo[:, None] * (x_hi - x0) / s_hi[:, None], s_lo, obs)
            else:  # CD: one Euler step of the teacher, EMA target
                d = self.edm_denoise(self.teacher, x_hi, s_hi, obs)
                x_lo = x_hi + (s_lo - s_hi)[:, None] * (x_hi - d) / s_hi[:, None]
                target = self.consistency(self.ema, x_lo, s_lo, obs)
        c = 0.00054 * math.sqrt(ACT)
        dist = ((online - target) ** 2).sum(-1).add(c ** 2).sqrt() - c
        return (dist / (s_hi - s_lo)).mean()

    def update(self, x0, obs):
        loss = self.loss(x0, obs)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.net.parameters()):
                p_ema.mul_(0.995).add_(p, alpha=0.005)
        return loss.item()


# ------------------------------------------------------------------ timing


def ours(kind, precision, compiled):
    model, kw = make(kind, precision)
    if kind == "CD":
        model.teacher_solver = "euler"
    if compiled:
        model.compile_network()
    return model.train(), kw


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--chunks", type=int, default=6)
    p.add_argument("--models", nargs="+", default=["EDM", "DDPM (T=5)", "CT", "CD"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    obs, act = torch.randn(BATCH, OBS), torch.rand(BATCH, ACT) * 2 - 1
    print(f"torch {torch.__version__}, {args.threads} threads; IDQLMlp(17, 6), batch {BATCH}; best of "
          f"{args.chunks} alternating chunks\n")
    print(f"{'model':<11} {'public-style':>12} {'ours fp32':>10} {'ours bf16+compile':>18} {'speedup':>8}  (upd/s)")
    for kind in args.models:
        public = PublicStyle(kind)
        fp32, kw32 = ours(kind, "fp32", False)
        best, kwb = ours(kind, "bf16", True)
        fns = {"public": lambda: public.update(act, obs), "fp32": lambda: fp32.update(act, obs, **kw32),
               "best": lambda: best.update(act, obs, **kwb)}
        for fn in fns.values():  # warm up (and compile)
            for _ in range(5):
                fn()
        sec = {k: float("inf") for k in fns}
        for c in range(args.chunks):
            for k in (list(fns) if c % 2 == 0 else list(fns)[::-1]):
                sec[k] = min(sec[k], timeit(fns[k], args.seconds / args.chunks, chunks=1))
        print(f"{kind:<11} {1 / sec['public']:>12.1f} {1 / sec['fp32']:>10.1f} {1 / sec['best']:>18.1f} "
              f"{sec['public'] / sec['best']:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
