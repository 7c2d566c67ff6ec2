"""experiments/seed_api_bandit.py with changes to IDQLMlp that need a patch rather than a constructor argument:
the diagnosis of the EDM Euler-4 gap to the public CleanDiffuser (results/seed-api-bandit.md, session 34).

    python experiments/seed_api_bandit_ablations.py --patch no-out-mish --seeds 0 1 --cd-updates 0 --label L
    python experiments/seed_api_bandit_ablations.py --patch no-out-mish rng-offset ...

Patches (any combination; every other argument goes to seed_api_bandit.py):
  no-out-mish   IDQLMlp without the Mish before its output layer (the public IDQLMlp's layout)
  rng-offset    draw the 32 normals the public untrainable Fourier embedding draws from the global RNG before
                the network's layers are initialised, and discard them (our frequencies stay the fixed draw)
  global-freqs  the same draws, used as the Fourier frequencies (the public embedding's behaviour)
  post-offset   the same 32 draws after the network is initialised: the initial weights are ours, only the
                training noise stream shifts
  big-offset    10,000 uniform draws before the layers are initialised (a long shift instead of 32 places)
  public-net    the public IDQLMlp layout re-created here (its own Fourier draw, nn.Sequential residual blocks,
                no Mish before the output), inside this library's ContinuousEDM
"""
from __future__ import annotations

import argparse
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import cleandiffuser.nn_diffusion as nn_diffusion
import cleandiffuser.nn_diffusion.idqlmlp as idqlmlp
from cleandiffuser.nn_diffusion.base import BaseNNDiffusion

PATCHES = ("no-out-mish", "rng-offset", "global-freqs", "post-offset", "big-offset", "public-net")
SCRIPT = Path(__file__).resolve().parent / "seed_api_bandit.py"


class PublicLayoutIDQLMlp(BaseNNDiffusion):
    """The public IDQLMlp's layout: Fourier frequencies N(0, 16^2) drawn from the global RNG first, a time MLP,
    residual blocks Dropout-LayerNorm-Linear(4h)-Mish-Linear, and a plain linear output layer."""

    def __init__(self, obs_dim: int, act_dim: int, emb_dim: int = 64, hidden_dim: int = 256, n_blocks: int = 3,
                 dropout: float = 0.1, **_):
        nn.Module.__init__(self)
        self.emb_dim = emb_dim
        self.freqs = nn.Parameter(torch.randn(emb_dim // 2) * 16.0, requires_grad=False)
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim * 2), nn.Mish(), nn.Linear(emb_dim * 2, emb_dim))
        self.affine_in = nn.Linear(obs_dim + act_dim + emb_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, 4 * hidden_dim),
                          nn.Mish(), nn.Linear(4 * hidden_dim, hidden_dim)) for _ in range(n_blocks))
        self.affine_out = nn.Linear(hidden_dim, act_dim)

    def forward(self, x, noise, condition=None):
        e = noise.float()[:, None] * (2 * np.pi * self.freqs)[None]
        h = self.affine_in(torch.cat([x, self.time_mlp(torch.cat([e.cos(), e.sin()], -1)), condition], -1))
        for block in self.blocks:
            h = h + block(h)
        return self.affine_out(h)


def apply(patches: list[str]) -> None:
    if "public-net" in patches:
        nn_diffusion.IDQLMlp = lambda obs, act, emb_dim=64, **kw: PublicLayoutIDQLMlp(obs, act, emb_dim)
        return
    if "no-out-mish" in patches:
        def forward(self, x, noise, condition=None):
            h = self.inp(torch.cat([x, self.time_mlp(self.map_noise(noise)), condition], -1))
            for block in self.blocks:
                h = block(h)
            return self.out(h)
        idqlmlp.IDQLMlp.forward = forward
    draws = [p for p in patches if p in ("rng-offset", "global-freqs", "post-offset", "big-offset")]
    if len(draws) > 1:
        raise SystemExit(f"choose one of {draws}")
    if draws:
        mode, init = draws[0], idqlmlp.IDQLMlp.__init__

        def patched_init(self, obs_dim, act_dim, emb_dim=64, *args, **kwargs):
            if mode == "big-offset":
                torch.rand(10_000)
            freqs = None if mode in ("post-offset", "big-offset") else torch.randn(emb_dim // 2) * 16.0
            init(self, obs_dim, act_dim, emb_dim, *args, **kwargs)
            if mode == "post-offset":
                torch.randn(emb_dim // 2)
            elif mode == "global-freqs":
                self.map_noise.embed.freqs.copy_(freqs * 2 * math.pi)
        idqlmlp.IDQLMlp.__init__ = patched_init


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", nargs="+", choices=PATCHES, required=True)
    args, rest = ap.parse_known_args()
    apply(args.patch)
    sys.argv = [str(SCRIPT), *rest]
    runpy.run_path(str(SCRIPT), run_name="__main__")


if __name__ == "__main__":
    main()
