"""Helpers for feeding training loops."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import torch

__all__ = ["loop_dataloader", "TensorBatchSampler"]


def loop_dataloader(dl: Iterable) -> Iterator:
    """Yield batches from ``dl`` forever, starting a new pass (new shuffle) each time.

    Raises ValueError if a pass yields nothing (an empty loader would spin forever).
    """
    while True:
        empty = True
        for batch in dl:
            empty = False
            yield batch
        if empty:
            raise ValueError("loop_dataloader: the data loader yielded no batches")


def _flatten(tree: Mapping[str, Any], prefix: tuple = ()) -> list[tuple[tuple, torch.Tensor]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.extend(_flatten(v, prefix + (k,)))
        else:
            out.append((prefix + (k,), v))
    return out


def _unflatten(items) -> dict:
    root: dict = {}
    for path, v in items:
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return root


class TensorBatchSampler:
    """Uniform random mini-batches (with replacement) from in-memory tensors.

    Args:
        tensors: a (possibly nested) dict of tensors sharing their first dimension N,
            e.g. ``D4RLMuJoCoTDDataset.tensors()``. Leaves are moved to ``device`` once.
        batch_size: rows per batch.
        device: where the data (and the batches) live.
        generator: a ``torch.Generator`` (its device is where indices are drawn), an int
            seed (a new generator on ``device``), or None (a generator on ``device``
            seeded from torch's global RNG, so ``torch.manual_seed`` makes it
            reproducible).

    ``sample()`` draws one ``torch.randint`` of indices and does one ``index_select`` per
    leaf; the batch has the same nested structure as ``tensors``. Iterating yields
    batches forever. ``state_dict()`` / ``load_state_dict()`` save and restore the
    generator state, so a resumed run draws exactly the batches the original would have.
    """

    def __init__(self, tensors: Mapping[str, Any], batch_size: int, device: str | torch.device = "cpu",
                 generator: torch.Generator | int | None = None):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        leaves = _flatten(tensors)
        if not leaves:
            raise ValueError("TensorBatchSampler: no tensors given")
        self._leaves = []
        n = None
        for path, t in leaves:
            t = torch.as_tensor(t)
            if t.dim() == 0:
                raise ValueError(f"TensorBatchSampler: tensor {'/'.join(map(str, path))} is a scalar")
            if n is None:
                n = t.shape[0]
            elif t.shape[0] != n:
                raise ValueError(
                    f"TensorBatchSampler: tensor {'/'.join(map(str, path))} has {t.shape[0]} rows, "
                    f"expected {n} (like {'/'.join(map(str, leaves[0][0]))})"
                )
            self._leaves.append((path, t.to(self.device)))
        if n == 0:
            raise ValueError("TensorBatchSampler: tensors are empty")
        self.size = int(n)
        self.batch_size = int(batch_size)
        if isinstance(generator, torch.Generator):
            self.generator = generator
        else:
            self.generator = torch.Generator(device=self.device)
            if generator is None:
                generator = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
            self.generator.manual_seed(int(generator))

    def __len__(self) -> int:
        """Number of rows (the sampler itself is infinite)."""
        return self.size

    def sample_indices(self) -> torch.Tensor:
        idx = torch.randint(self.size, (self.batch_size,), generator=self.generator, device=self.generator.device)
        return idx.to(self.device, non_blocking=True)

    def sample(self) -> dict:
        idx = self.sample_indices()
        return _unflatten((path, t.index_select(0, idx)) for path, t in self._leaves)

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        return {"generator_state": self.generator.get_state(), "size": self.size, "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "size" in state and int(state["size"]) != self.size:
            raise ValueError(f"TensorBatchSampler.load_state_dict: state is for {int(state['size'])} rows, sampler has {self.size}")
        self.generator.set_state(torch.as_tensor(state["generator_state"], dtype=torch.uint8).cpu())
