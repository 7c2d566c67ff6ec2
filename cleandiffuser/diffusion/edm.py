"""EDM (Karras et al. 2022): x = x0 + sigma eps, preconditioned denoiser
D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)), ln sigma ~ N(P_mean, P_std^2) in training,
Euler / Heun on the Karras grid. The network's noise coordinate is c_noise = ln(sigma) / 4.
"""
import math

import numpy as np
import torch

from .base import DiffusionModel, as_float32
from .schedules import karras_sigmas


def edm_precondition(sigma, sigma_data: float):
    """Karras et al.'s c_skip, c_out, c_in at noise level sigma (a float or a tensor)."""
    sd2 = sigma_data ** 2
    c_skip = sd2 / (sigma ** 2 + sd2)
    c_out = sigma * sigma_data / (sigma ** 2 + sd2) ** 0.5
    c_in = 1 / (sigma ** 2 + sd2) ** 0.5
    return c_skip, c_out, c_in


class ContinuousEDM(DiffusionModel):
    solvers = ("euler", "heun")
    default_solver = "euler"
    # the preconditioning and loss weighting fused into the network's graph: ~3% more updates/s
    compiled_losses = ("_denoising_loss",)

    def __init__(self, nn_diffusion, nn_condition=None, fix_mask=None, loss_weight=None, classifier=None,
                 grad_clip_norm=None, ema_rate=0.995, optim_params=None, sigma_data: float = 0.5,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, P_mean: float = -1.2,
                 P_std: float = 1.2, x_max=None, x_min=None, device="cpu", precision="auto", ema_warmup=True):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        super().__init__(nn_diffusion, nn_condition, fix_mask, loss_weight, classifier, grad_clip_norm,
                         ema_rate, optim_params, x_max, x_min, device, precision, ema_warmup)
        self.sigma_data, self.sigma_min, self.sigma_max, self.rho = sigma_data, sigma_min, sigma_max, rho
        self.P_mean, self.P_std = P_mean, P_std

    def precondition(self, sigma):
        """c_skip, c_out, c_in at sigma (a float or a tensor)."""
        return edm_precondition(sigma, self.sigma_data)

    @staticmethod
    def noise_coordinate(sigma):
        return 0.25 * (torch.log(sigma) if isinstance(sigma, torch.Tensor) else math.log(sigma))

    def denoise(self, net, x, sigma, cond_emb, noise=None):
        """D(x, sigma); sigma is a float or a (B,) tensor."""
        c_skip, c_out, c_in = self.precondition(sigma)
        if isinstance(sigma, torch.Tensor):
            shape = (-1, *([1] * (x.dim() - 1)))
            c_skip, c_out, c_in = c_skip.view(shape), c_out.view(shape), c_in.view(shape)
            noise = self.noise_coordinate(sigma) if noise is None else noise
            return c_skip * x + c_out * net["diffusion"](c_in * x, noise, cond_emb).float()
        out = as_float32(net["diffusion"](self.scale(x, c_in), noise, cond_emb))  # sampling: float sigma
        return self.affine(out, c_out, x, c_skip)

    def loss(self, x0, cond_emb, condition=None, **kwargs):
        sigma = (torch.randn(x0.shape[0], device=self.device) * self.P_std + self.P_mean).exp()
        return self._denoising_loss(x0, cond_emb, sigma, torch.randn_like(x0)), {}

    def _denoising_loss(self, x0, cond_emb, sigma, eps):
        shape = (-1, *([1] * (x0.dim() - 1)))
        x = self.inpaint(x0 + sigma.view(shape) * eps, x0)
        weight = ((sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2)
        err = (self.denoise(self.model, x, sigma, cond_emb) - x0) ** 2
        return (weight.view(shape) * self.weighted(err)).mean()

    def predict_x0(self, net, x, alpha, sigma, noise, cond_emb):
        return self.denoise(net, x, sigma, cond_emb, noise)

    def sample_grid(self, sample_steps, sample_step_schedule="karras"):
        """sigma_max and the next sample_steps - 1 points of a Karras grid of sample_steps + 1 levels that ends
        at sigma_min, then 0: every step does work. (The grid of sample_steps levels ending at sigma_min spent
        the last step on sigma_min -> 0, a no-op, so Euler-4 took three real steps: bandit precision 0.48 vs
        0.70 with this grid; results/seed-api-bandit.md.) The public CleanDiffuser integrates the same levels
        and stops at sigma_min instead of 0."""
        sigmas = np.append(karras_sigmas(sample_steps + 1, self.sigma_min, self.sigma_max, self.rho)[:sample_steps],
                           0.0).tolist()
        noises = [self.noise_coordinate(s) if s > 0 else 0.0 for s in sigmas]
        return [1.0] * len(sigmas), sigmas, noises

    def hparams(self):
        return {"sigma_data": self.sigma_data, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}
