"""Samplers as plain functions over a denoiser (in the style of k-diffusion).

`denoise(x, i)` returns the (guided, clipped) prediction of x0 at grid point i, whose noise level
is (alphas[i], sigmas[i]). Grids run from i = 0 (most noise) to i = N (clean: alpha 1, sigma 0).
`constrain(x)` re-applies inpainting after every step. lambda = log(alpha / sigma); ratios are
computed directly so the last step onto sigma = 0 needs no special case.
"""
import math
from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]

VP_SOLVERS = (
    "ddpm", "ddim",
    "ode_dpmsolver_1", "ode_dpmsolver_2", "ode_dpmsolver++_1", "ode_dpmsolver++_2M",
    "sde_dpmsolver_1", "sde_dpmsolver_2", "sde_dpmsolver++_1", "sde_dpmsolver++_2M",
    "euler", "heun",
)
# Solvers that draw fresh noise at every step.
STOCHASTIC_SOLVERS = ("ddpm", "sde_dpmsolver_1", "sde_dpmsolver_2", "sde_dpmsolver++_1", "sde_dpmsolver++_2M")


def solver_nfe(solver: str, n_steps: int) -> int:
    """Network evaluations per sample (Heun skips its correction on the step onto sigma = 0)."""
    return 2 * n_steps - 1 if solver == "heun" else n_steps


def solve(denoise: Denoiser, x: torch.Tensor, alphas, sigmas, solver: str,
          constrain: Callable[[torch.Tensor], torch.Tensor] | None = None,
          history: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate from grid point 0 to the clean end with `solver`; history[:, i] gets x at point i."""
    if solver not in VP_SOLVERS:
        raise ValueError(f"solver={solver!r} is not one of {VP_SOLVERS}")
    constrain = constrain or (lambda v: v)
    multistep = solver.endswith("_2") or solver.endswith("_2M")
    use_eps = solver in ("ode_dpmsolver_1", "ode_dpmsolver_2", "sde_dpmsolver_1", "sde_dpmsolver_2")
    prev = None  # (model output used by the solver, h) of the previous step
    n = len(sigmas) - 1
    if history is not None:
        history[:, 0] = x
    for i in range(n):
        a, s, a1, s1 = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        x0 = denoise(x, i)
        if s1 == 0.0:  # onto the clean end: every solver returns its x0 estimate
            x = x0
        elif solver == "heun":
            x = _heun(denoise, x, x0, i, a, s, a1, s1)
        else:
            eps = (x - a * x0) / s
            r_exp = (s1 * a) / (a1 * s)  # exp(-h), h = lambda_{i+1} - lambda_i > 0
            out = eps if use_eps else x0
            d = out
            h = -math.log(r_exp) if multistep else None
            if multistep and prev is not None:
                r = prev[1] / h
                d1 = (out - prev[0]) / r
                d = out + 0.5 * d1 if solver.startswith("ode") else None
            else:
                d1 = None
            x = _step(solver, x, x0, eps, d, d1, a, s, a1, s1, r_exp)
            if multistep:
                prev = (out, h)
        x = constrain(x)
        if history is not None:
            history[:, i + 1] = x
    return x


def _step(solver, x, x0, eps, d, d1, a, s, a1, s1, e_mh):
    """One step from (a, s) to (a1, s1); e_mh = exp(-h)."""
    if solver in ("ddim", "euler", "ode_dpmsolver_1", "ode_dpmsolver++_1") or (
            solver in ("ode_dpmsolver_2", "ode_dpmsolver++_2M") and d1 is None):
        return a1 * x0 + s1 * eps  # first order: DDIM in either parameterization
    if solver == "ode_dpmsolver_2":  # multistep, noise prediction
        return (a1 / a) * x - (a1 * s / a - s1) * d
    if solver == "ode_dpmsolver++_2M":
        return (s1 / s) * x - a1 * (e_mh - 1.0) * d
    if solver == "ddpm":
        z = (s1 / s) * (1.0 - (a / a1) ** 2) ** 0.5
        return a1 * x0 + (s1 ** 2 - z ** 2) ** 0.5 * eps + z * torch.randn_like(x)
    noise = torch.randn_like(x)
    if solver in ("sde_dpmsolver++_1", "sde_dpmsolver++_2M"):
        e2 = e_mh ** 2
        out = (s1 / s) * e_mh * x + a1 * (1 - e2) * x0 + s1 * (1 - e2) ** 0.5 * noise
        if d1 is not None:
            out = out + 0.5 * a1 * (1 - e2) * d1
        return out
    # sde_dpmsolver_1 / _2 (noise prediction); exp(h) - 1 = (a1 s / (a s1)) - 1
    em1 = 1.0 / e_mh - 1.0
    out = (a1 / a) * x - 2 * s1 * em1 * eps + s1 * (1.0 / e_mh ** 2 - 1.0) ** 0.5 * noise
    if d1 is not None:
        out = out - s1 * em1 * d1
    return out


def _heun(denoise, x, x0, i, a, s, a1, s1):
    """Heun's method on the PF ODE in y = x / alpha, u = sigma / alpha: dy/du = (y - x0) / u."""
    y, u, u1 = x / a, s / a, s1 / a1
    d = (y - x0) / u
    y_e = y + (u1 - u) * d
    x0_e = denoise(y_e * a1, i + 1)
    d_e = (y_e - x0_e) / u1
    return (y + (u1 - u) * 0.5 * (d + d_e)) * a1
