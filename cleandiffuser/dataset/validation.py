"""Checks shared by the dataset readers and writers.

Every failure raises :class:`DatasetFormatError` (a ``ValueError``) whose message names
the file and the key at fault. The readers only ever open files read-only, so a failed
check never modifies anything on disk.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DatasetFormatError",
    "require_keys",
    "check_array",
    "check_same_length",
]


class DatasetFormatError(ValueError):
    """A dataset file does not have the expected layout or content.

    Attributes:
        file: path of the offending file (str) or a description of the in-memory source.
        key: the key (HDF5 path inside the file) at fault, or None for file-level problems.
    """

    def __init__(self, file, key: str | None, problem: str):
        self.file = str(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else str(file)
        self.key = key
        self.problem = problem
        where = f"key '{key}'" if key is not None else "file"
        super().__init__(f"{self.file}: {where}: {problem}")

    def __reduce__(self):  # picklable (e.g. raised inside DataLoader workers)
        return (type(self), (self.file, self.key, self.problem))


def require_keys(file, found: Iterable[str], required: Sequence[str], group: str = "") -> None:
    """Raise if any of ``required`` is missing from ``found`` (lists what was found)."""
    found = sorted(found)
    prefix = f"{group}/" if group else ""
    missing = [k for k in required if k not in found]
    if missing:
        raise DatasetFormatError(
            file,
            prefix + missing[0],
            f"missing required key(s) {[prefix + m for m in missing]}; "
            f"keys found{' in ' + repr(group) if group else ''}: {found}",
        )


_KIND_NAMES = {
    "float": "a floating-point dtype",
    "numeric": "a numeric (integer or float) dtype",
    "flag": "a boolean or 0/1 numeric dtype",
}


def _dtype_ok(dtype: np.dtype, kind: str) -> bool:
    if kind == "float":
        return dtype.kind == "f"
    if kind == "numeric":
        return dtype.kind in "iuf"
    if kind == "flag":
        return dtype.kind in "biuf"
    raise ValueError(f"unknown dtype kind {kind!r}")


def check_dtype(file, key: str, dtype: np.dtype, kind: str) -> None:
    """Check a dtype *before* loading data (cheap; catches strings/objects early)."""
    dtype = np.dtype(dtype)
    if not _dtype_ok(dtype, kind):
        raise DatasetFormatError(
            file, key, f"has dtype {dtype} ({_describe_dtype(dtype)}); expected {_KIND_NAMES[kind]}"
        )


def _describe_dtype(dtype: np.dtype) -> str:
    return {
        "b": "boolean",
        "i": "integer",
        "u": "unsigned integer",
        "f": "float",
        "c": "complex",
        "S": "byte string",
        "U": "unicode string",
        "O": "object/variable-length string",
        "V": "compound/opaque",
    }.get(dtype.kind, dtype.kind)


def check_array(
    file,
    key: str,
    arr: np.ndarray,
    *,
    kind: str,
    ndim: int | Sequence[int],
    finite: bool = True,
) -> np.ndarray:
    """Validate dtype kind, number of dimensions, finiteness (``finite``: also once cast to float32, what the
    readers return) and 0/1 values of flags.

    Returns ``arr`` unchanged so it can be used inline.
    """
    arr = np.asarray(arr)
    check_dtype(file, key, arr.dtype, kind)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if arr.ndim not in allowed:
        raise DatasetFormatError(
            file,
            key,
            f"has shape {arr.shape} (ndim {arr.ndim}); expected ndim "
            f"{' or '.join(str(d) for d in allowed)}",
        )
    if finite and arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            row, elem = _first_bad(arr, bad)
            value = arr[elem] if arr.ndim > 0 else arr[()]
            what = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
            raise DatasetFormatError(
                file,
                key,
                f"contains {what} (first non-finite value at index {row}"
                + (f", element {elem}" if arr.ndim > 1 else "")
                + f"; {int(bad.sum())} non-finite value(s) in total)",
            )
        _check_fits_float32(file, key, arr)
    if kind == "flag" and arr.dtype.kind != "b":
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            idx = int(np.argwhere(bad.reshape(arr.shape[0], -1).any(axis=1))[0, 0])
            raise DatasetFormatError(
                file, key, f"must hold only 0/1 (or booleans); found {arr.reshape(arr.shape[0], -1)[idx]} at index {idx}"
            )
    return arr


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> tuple[int, tuple]:
    """(row, full index) of the first True of the mask `bad` over `arr`."""
    if arr.ndim == 0:
        return 0, ()
    elem = tuple(int(i) for i in np.argwhere(bad)[0])
    return elem[0], elem


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_fits_float32(file, key: str, arr: np.ndarray) -> None:
    """Wider floats must fit float32, the dtype the readers return and training uses: a finite float64 such
    as 1e39 would silently become inf there."""
    if arr.dtype.itemsize <= 4:
        return
    too_big = np.abs(arr) > _FLOAT32_MAX
    if too_big.any():
        row, elem = _first_bad(arr, too_big)
        raise DatasetFormatError(
            file,
            key,
            f"has {arr.dtype} value {float(arr[elem]):.6g} at index {row}"
            + (f", element {elem}" if arr.ndim > 1 else "")
            + f", beyond float32's range (|x| <= {_FLOAT32_MAX:.4g}) that training uses; "
            f"{int(too_big.sum())} such value(s) in total",
        )


def check_same_length(file, arrays: Mapping[str, np.ndarray], expected: Mapping[str, int] | None = None) -> int:
    """Check that all arrays have the same leading dimension (plus fixed offsets).

    ``expected`` optionally maps a key to an offset added to the reference length
    (e.g. Minari ``observations`` have one more row than ``actions``).
    Returns the reference length (that of the first key).
    """
    expected = dict(expected or {})
    items = list(arrays.items())
    ref_key, ref = items[0]
    ref_len = int(ref.shape[0]) - expected.get(ref_key, 0)
    for key, arr in items[1:]:
        want = ref_len + expected.get(key, 0)
        if int(arr.shape[0]) != want:
            rel = ""
            if expected.get(key, 0) or expected.get(ref_key, 0):
                rel = f" (expected {want} given '{ref_key}')"
            raise DatasetFormatError(
                file,
                key,
                f"length mismatch: '{key}' has {arr.shape[0]} rows but '{ref_key}' has "
                f"{ref.shape[0]} rows{rel}",
            )
    return ref_len
