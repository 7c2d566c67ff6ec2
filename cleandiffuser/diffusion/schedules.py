"""Noise schedules (data -> noise) and step schedules (which noise levels a sampler visits).

A noise level is a pair (alpha, sigma) with x_t = alpha * x0 + sigma * eps. VP diffusion has
alpha^2 + sigma^2 = 1; EDM / consistency models have alpha = 1; rectified flow alpha = 1 - t,
sigma = t. Every sampler grid ends at the clean level (alpha = 1, sigma = 0).
"""
import math

import numpy as np
import torch

NOISE_SCHEDULES = ("linear", "cosine")
STEP_SCHEDULES = ("uniform", "quad")


def vp_alpha_sigma(t: torch.Tensor | float, schedule: str = "cosine", params: dict | None = None):
    """alpha_t, sigma_t of the VP SDE at continuous time t in [0, 1]."""
    params = params or {}
    t = torch.as_tensor(t, dtype=torch.float64)
    if schedule == "linear":
        b0, b1 = params.get("beta0", 0.1), params.get("beta1", 20.0)
        log_alpha = -(b1 - b0) / 4 * t ** 2 - b0 / 2 * t
        alpha = log_alpha.exp()
    elif schedule == "cosine":
        s = params.get("s", 0.008)
        t = t.clamp(max=params.get("t_max", 0.9946))
        alpha = torch.cos(math.pi / 2 * (t + s) / (1 + s)) / math.cos(math.pi / 2 * s / (1 + s))
    else:
        raise ValueError(f"noise_schedule={schedule!r} is not one of {NOISE_SCHEDULES}")
    alpha = alpha.clamp(0.0, 1.0)
    return alpha, (1 - alpha ** 2).clamp(min=0.0).sqrt()


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """n noise levels from sigma_max down to sigma_min, denser near sigma_min (EDM eq. 5)."""
    if n == 1:
        return np.array([sigma_max], dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def time_grid(n_steps: int, schedule: str = "uniform", t_max: float = 1.0) -> np.ndarray:
    """n_steps + 1 times from t_max down to 0 (0 is the clean end)."""
    u = np.linspace(1.0, 0.0, n_steps + 1)
    if schedule == "uniform":
        return t_max * u
    if schedule == "quad":
        return t_max * u ** 2
    raise ValueError(f"sample_step_schedule={schedule!r} is not one of {STEP_SCHEDULES}")


def index_grid(n_steps: int, n_total: int, schedule: str = "uniform") -> np.ndarray:
    """Distinct integer steps from n_total down to 0 for a discrete-time model."""
    grid = np.unique(np.round(time_grid(n_steps, schedule, float(n_total))).astype(np.int64))[::-1]
    return grid.copy()
