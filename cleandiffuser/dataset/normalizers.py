"""Feature normalizers working on numpy arrays and torch tensors alike.

Statistics are fitted over axis 0 of the data and broadcast over any leading dimensions
when applied (``(..., D)``). numpy in -> numpy out; torch in -> torch out on the same
device. Output dtype is the input's floating dtype (float32 for integer inputs).
``state_dict()`` holds plain numpy arrays only (safe for safetensors / no pickle).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["BaseNormalizer", "GaussianNormalizer", "MinMaxNormalizer", "ImageNormalizer"]


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class BaseNormalizer:
    """Base class: subclasses define ``_names`` (fitted parameter arrays) and the
    ``_norm(x, *params)`` / ``_unnorm(x, *params)`` formulas, which must work for both
    numpy arrays and torch tensors."""

    _names: tuple[str, ...] = ()

    def __init__(self):
        self._cache: dict[Any, tuple] = {}

    # parameters cast to the type/dtype/device of x (cached per torch device & dtype)
    def _params(self, x):
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            key = (x.device, dtype)
            if key not in self._cache:
                self._cache[key] = tuple(self._derive(*(torch.as_tensor(getattr(self, n), dtype=dtype, device=x.device) for n in self._names)))
            return x.to(dtype), self._cache[key]
        x = np.asarray(x)
        dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
        return x.astype(dtype, copy=False), tuple(self._derive(*(getattr(self, n).astype(dtype) for n in self._names)))

    def _derive(self, *params):
        return params

    def normalize(self, x):
        x, p = self._params(x)
        return self._norm(x, *p)

    def unnormalize(self, x):
        x, p = self._params(x)
        return self._unnorm(x, *p)

    def _norm(self, x, *p):
        raise NotImplementedError

    def _unnorm(self, x, *p):
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        return {n: np.array(getattr(self, n), copy=True) for n in self._names}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [n for n in self._names if n not in state]
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}; got {sorted(state)}")
        for n in self._names:
            setattr(self, n, _to_numpy(state[n]).astype(np.float64))
        self._cache = {}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]):
        obj = cls.__new__(cls)
        BaseNormalizer.__init__(obj)
        obj.load_state_dict(state)
        return obj

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}={tuple(getattr(self, n).shape)}" for n in self._names)
        return f"{type(self).__name__}({shapes})"


class GaussianNormalizer(BaseNormalizer):
    """``(x - mean) / std`` with mean/std over axis 0; dims with std == 0 (below ``eps``)
    use std = 1."""

    _names = ("mean", "std")

    def __init__(self, x, eps: float = 1e-8):
        super().__init__()
        x = _to_numpy(x).astype(np.float64)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError("GaussianNormalizer needs data with at least one row")
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std < eps, 1.0, std)

    def _norm(self, x, mean, std):
        return (x - mean) / std

    def _unnorm(self, x, mean, std):
        return x * std + mean


class MinMaxNormalizer(BaseNormalizer):
    """Maps ``[min, max]`` (per dim, over axis 0) linearly onto ``[-1, 1]``.

    Dims whose range is below ``eps`` are treated as constant: normalize maps them to
    ``x - min`` (so the constant value -> 0) instead of dividing by ~0; unnormalize
    inverts this exactly. (Diffusion Policy's "limits" normalizer.) The data extremes
    map exactly to -1 and 1 (no clipping of out-of-range inputs).
    """

    _names = ("min", "max")

    def __init__(self, x, eps: float = 1e-4):
        super().__init__()
        x = _to_numpy(x).astype(np.float64)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError("MinMaxNormalizer needs data with at least one row")
        self.eps = eps
        self.min = x.min(axis=0)
        self.max = x.max(axis=0)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**super().state_dict(), "eps": np.array(self.eps, dtype=np.float64)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.eps = float(_to_numpy(state["eps"])) if "eps" in state else 1e-4

    @property
    def constant_dims(self) -> np.ndarray:
        """Boolean mask of dims whose fitted range is below ``eps``."""
        return (self.max - self.min) < self.eps

    def _derive(self, lo, hi):
        half = (hi - lo) / 2  # computed in the target dtype: (max - min) / half == 2 exactly
        if isinstance(lo, torch.Tensor):
            const = torch.as_tensor(self.constant_dims, device=lo.device)
            half = torch.where(const, torch.ones_like(half), half)
            offset = torch.where(const, torch.zeros_like(half), -torch.ones_like(half))
        else:
            const = self.constant_dims
            half = np.where(const, 1, half).astype(lo.dtype)
            offset = np.where(const, 0, -1).astype(lo.dtype)
        return lo, half, offset

    def _norm(self, x, lo, half, offset):
        return (x - lo) / half + offset

    def _unnorm(self, x, lo, half, offset):
        return (x - offset) * half + lo


class ImageNormalizer(BaseNormalizer):
    """Images in ``[0, 1]`` (float) or ``[0, 255]`` (uint8) <-> ``[-1, 1]``.

    ``normalize`` detects uint8 input; ``unnormalize`` returns floats in ``[0, 1]``, or
    uint8 in ``[0, 255]`` with ``to_uint8=True``.
    """

    _names = ()

    def __init__(self):
        super().__init__()

    def normalize(self, x):
        if isinstance(x, torch.Tensor):
            if x.dtype == torch.uint8:
                return x.to(torch.float32) / 127.5 - 1.0
            return x * 2.0 - 1.0 if x.is_floating_point() else x.to(torch.float32) * 2.0 - 1.0
        x = np.asarray(x)
        if x.dtype == np.uint8:
            return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        x = x if x.dtype.kind == "f" else x.astype(np.float32)
        return x * x.dtype.type(2) - x.dtype.type(1)

    def unnormalize(self, x, to_uint8: bool = False):
        if isinstance(x, torch.Tensor):
            x = x if x.is_floating_point() else x.to(torch.float32)
            y = (x + 1.0) / 2.0
            return (y.clamp(0, 1) * 255.0).round().to(torch.uint8) if to_uint8 else y
        x = np.asarray(x)
        x = x if x.dtype.kind == "f" else x.astype(np.float32)
        y = (x + x.dtype.type(1)) / x.dtype.type(2)
        return np.round(np.clip(y, 0, 1) * 255).astype(np.uint8) if to_uint8 else y
