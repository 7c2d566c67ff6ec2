"""Rectified flow: x_t = (1 - t) x0 + t x1, the network predicts the velocity x1 - x0.

x1 is Gaussian noise by default or any source (`source=` in update, `x_T=` in sample: reflow).
Sampling integrates from t = 1 to 0 with Euler steps. Noise coordinate: t.
"""
import numpy as np
import torch

from .base import DiffusionModel
from .schedules import index_grid, time_grid


class ContinuousRectifiedFlow(DiffusionModel):
    solvers = ("euler",)
    default_solver = "euler"

    def sample_times(self, batch):
        return torch.rand(batch, device=self.device)

    def loss(self, x0, cond_emb, condition=None, source: torch.Tensor | None = None,
             times: torch.Tensor | None = None, **kwargs):
        """Flow matching on x_t = (1 - t) x0 + t x1; source (x1, default N(0, I)) and times (t, default
        sample_times) may be given, e.g. drawn outside a compiled loss."""
        x1 = torch.randn_like(x0) if source is None else self._check_x(source, "source", x0.shape[0])
        t = self.sample_times(x0.shape[0]) if times is None else times
        tb = t.view(-1, *([1] * (x0.dim() - 1)))
        x_t = self.inpaint((1 - tb) * x0 + tb * x1, x0)
        v = self.model["diffusion"](x_t, t, cond_emb).float()
        return self.weighted((v - (x1 - x0)) ** 2).mean(), {}

    def predict_x0(self, net, x, alpha, sigma, noise, cond_emb):
        return torch.sub(x, net["diffusion"](x, noise, cond_emb), alpha=sigma)  # x - sigma v, in float32

    def _grid_from_times(self, times: np.ndarray):
        return (1.0 - times).tolist(), times.tolist(), times.tolist()

    def sample_grid(self, sample_steps, sample_step_schedule):
        return self._grid_from_times(time_grid(sample_steps, sample_step_schedule))


class DiscreteRectifiedFlow(ContinuousRectifiedFlow):
    """Rectified flow trained on `diffusion_steps` discrete times t_i = i / T."""

    def __init__(self, nn_diffusion, nn_condition=None, fix_mask=None, loss_weight=None, classifier=None,
                 grad_clip_norm=None, diffusion_steps: int = 1000, ema_rate=0.995, optim_params=None,
                 x_max=None, x_min=None, device="cpu", precision="auto", ema_warmup=True):
        if not isinstance(diffusion_steps, int) or diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be a positive int, got {diffusion_steps!r}")
        super().__init__(nn_diffusion, nn_condition, fix_mask, loss_weight, classifier, grad_clip_norm,
                         ema_rate, optim_params, x_max, x_min, device, precision, ema_warmup)
        self.diffusion_steps = diffusion_steps

    def sample_times(self, batch):
        return torch.randint(1, self.diffusion_steps + 1, (batch,), device=self.device).float() / self.diffusion_steps

    def max_sample_steps(self):
        return self.diffusion_steps

    def sample_grid(self, sample_steps, sample_step_schedule):
        return self._grid_from_times(index_grid(sample_steps, self.diffusion_steps, sample_step_schedule)
                                     / self.diffusion_steps)

    def hparams(self):
        return {"diffusion_steps": self.diffusion_steps}
