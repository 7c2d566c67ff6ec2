"""Mish as single fused CPU kernels, and dropout with a cheap mask inside compiled graphs.

Eager Mish is x * tanh(softplus(x)): on this project's CPUs its forward and backward cost more than
the matmuls around them (1.24 ms forward + backward for a 256 x 1024 activation, 0.52 ms fused:
benchmarks/bench_ops.py). Here the forward and the hand-derived backward are each one loop compiled by TorchInductor,
using tanh(softplus(x)) = (1 - q) / (1 + q) with q = (1 - sigmoid(x))^2.

The fused path is taken for large CPU tensors only (small ones are dominated by the compiled call's
fixed overhead, and CUDA's eager kernels are already fused); anywhere else, or if compilation is not
possible (no C++ compiler; set CLEANDIFFUSER_FUSED=0 to switch it off), the eager op runs.

Inductor draws a dropout mask with one scalar Philox call per element; `dropout` hashes element indices
instead (vectorized int32 ops, ~10x cheaper), in compiled CPU graphs only.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

FUSED_MIN_NUMEL = 16384


def _mish_forward(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    q = (1 - torch.sigmoid(xf)) ** 2
    return (xf * (1 - q) / (1 + q)).to(x.dtype)


def _mish_backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    s = torch.sigmoid(xf)
    q = (1 - s) ** 2
    t = (1 - q) / (1 + q)  # tanh(softplus(x)); d/dx = t + x (1 - t^2) sigmoid(x)
    return (grad.float() * (t + xf * (1 - t * t) * s)).to(grad.dtype)


@functools.cache
def _kernels():
    """Compiled (mish_fwd, mish_bwd), or None where the fused path is unavailable."""
    if os.environ.get("CLEANDIFFUSER_FUSED", "1") == "0":
        return None
    try:
        kernels = tuple(torch.compile(f, dynamic=True) for f in (_mish_forward, _mish_backward))
        x = torch.linspace(-3, 3, 64)
        if not torch.allclose(_flat_call(kernels[0], x), F.mish(x), atol=1e-5):  # also triggers compilation
            raise RuntimeError("fused Mish disagrees with torch's")
        return kernels
    except Exception as e:  # no C++ compiler, unsupported platform, ...
        warnings.warn(f"fused CPU kernels unavailable, using eager Mish ({type(e).__name__}: {e})")
        return None


def _flat_call(kernel, *tensors: torch.Tensor) -> torch.Tensor:
    """A compiled elementwise kernel on the flattened, detached tensors, without grad or autocast. Dynamo
    specializes a compiled function on its inputs' rank and requires_grad and on the grad and autocast modes; called
    as they come (2-, 3-, 4-d activations, training and evaluation, bf16 autocast) the variants passed its recompile
    limit (8) within one student update, and calls past it ran the unfused formula. Called like this, one variant per
    dtype. The flat input is a fresh tensor on the same storage, not a view: Dynamo also guards on a view's base."""
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        return kernel(*map(_flat_alias, tensors))


def _flat_alias(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().contiguous()
    return torch.empty(0, dtype=x.dtype, device=x.device).set_(x.untyped_storage(), x.storage_offset(), (x.numel(),),
                                                               (1,))


def _use_fused(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.numel() >= FUSED_MIN_NUMEL and x.dtype in (torch.float32, torch.bfloat16)
            and _kernels() is not None)


class _FusedMish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _flat_call(_kernels()[0], x).view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _flat_call(_kernels()[1], x, grad).view(x.shape)


def mish(x: torch.Tensor) -> torch.Tensor:
    """x * tanh(softplus(x)); equal to F.mish to float rounding."""
    if torch.compiler.is_compiling():  # inside a compiled graph: let Inductor fuse the cheap formula
        return _mish_forward(x)
    return _FusedMish.apply(x) if _use_fused(x) else F.mish(x)


class Mish(nn.Mish):
    """nn.Mish with the fused CPU kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)



def _hash_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Bernoulli(1 - p) mask shaped like x: the lowbias32 integer hash of (element index * golden ratio + seed),
    the seed drawn from torch's generator (so seeding and checkpointed RNG state replay it). int32 arithmetic
    wraps; shifts are masked to be logical."""
    seed = torch.randint(-2 ** 31, 2 ** 31 - 1, (), dtype=torch.int32, device=x.device)
    h = torch.arange(x.numel(), dtype=torch.int32, device=x.device).view(x.shape) * -1640531535 + seed
    h = (h ^ ((h >> 16) & 0xFFFF)) * 0x7FEB352D
    h = (h ^ ((h >> 15) & 0x1FFFF)) * -2073254261  # 0x846CA68B
    h = h ^ ((h >> 16) & 0xFFFF)
    return (h & 0xFFFFFF) >= round(p * (1 << 24))


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training). Inside a compiled CPU graph the mask is a vectorized integer hash instead of
    Inductor's per-element Philox draw, which cost more than LayerNorm and the residual add around it
    (~5% of an IDQLMlp training update, results/bench_core.md); eager calls use torch's dropout."""
    if not training or p == 0:
        return x
    if torch.compiler.is_compiling() and x.device.type == "cpu" and x.numel() < 2 ** 31:
        return x * _hash_keep_mask(x, p) * (1 / (1 - p))
    return F.dropout(x, p, True)
