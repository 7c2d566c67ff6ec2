"""2-D toy distributions with known answers, and sample-quality metrics, for tests and demos."""
import math

import torch


def ring_centers(n_modes: int = 8, radius: float = 0.7) -> torch.Tensor:
    angle = torch.arange(n_modes, dtype=torch.float32) * (2 * math.pi / n_modes)
    return radius * torch.stack([angle.cos(), angle.sin()], dim=1)


def gaussian_ring(n: int, n_modes: int = 8, radius: float = 0.7, std: float = 0.05,
                  modes: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """n samples of a mixture of `n_modes` Gaussians on a ring; returns (x (n, 2), mode index (n,)).
    `modes` restricts sampling to the given mode indices (n,) (the conditional distribution)."""
    centers = ring_centers(n_modes, radius)
    if modes is None:
        modes = torch.randint(0, n_modes, (n,), generator=generator)
    x = centers[modes] + std * torch.randn(n, 2, generator=generator)
    return x, modes


def parity_conditional(n: int, n_modes: int = 8, std: float = 0.05, generator=None):
    """Conditional toy: condition c in {0, 1} (as a (n, 1) float); x lies on the modes with index
    parity c. Returns (x, c, mode)."""
    c = torch.randint(0, 2, (n,), generator=generator)
    modes = 2 * torch.randint(0, n_modes // 2, (n,), generator=generator) + c
    x, _ = gaussian_ring(n, n_modes, std=std, modes=modes, generator=generator)
    return x, c.float()[:, None], modes


def nearest_mode(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and distance to the nearest mode center for each sample."""
    d = torch.cdist(x.float(), centers)
    dist, idx = d.min(dim=1)
    return idx, dist


def mode_coverage(x: torch.Tensor, centers: torch.Tensor, radius: float, min_fraction: float = 0.02):
    """(fraction of samples within `radius` of some mode, number of modes holding >= min_fraction)."""
    idx, dist = nearest_mode(x, centers)
    near = dist < radius
    counts = torch.bincount(idx[near], minlength=len(centers)).float() / max(1, len(x))
    return near.float().mean().item(), int((counts >= min_fraction).sum())


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two equal-size point clouds."""
    if a.shape != b.shape:
        raise ValueError(f"point clouds must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(a.shape[1], n_projections, generator=g)
    proj = proj / proj.norm(dim=0, keepdim=True)
    pa, _ = (a.float().cpu() @ proj).sort(dim=0)
    pb, _ = (b.float().cpu() @ proj).sort(dim=0)
    return (pa - pb).abs().mean().item()


def sample_quality(samples: torch.Tensor, n_modes: int = 8, radius: float = 0.15) -> dict:
    """Sliced Wasserstein distance to fresh ring samples (fixed seed), fraction of samples within
    `radius` of a mode, and the number of modes covered."""
    ref, _ = gaussian_ring(len(samples), n_modes, generator=torch.Generator().manual_seed(1))
    near, modes = mode_coverage(samples, ring_centers(n_modes), radius)
    return {"sw": sliced_wasserstein(samples, ref), "near": near, "modes": modes}
