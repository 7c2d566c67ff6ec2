"""VP diffusion (DDPM / score SDE): x_t = alpha_t x0 + sigma_t eps with alpha^2 + sigma^2 = 1.

The network predicts eps (predict_noise=True) or x0. Its noise coordinate is t.
DiscreteDiffusionSDE trains on the T grid times t_i = i / T; ContinuousDiffusionSDE on t ~ U[eps, 1].
"""
import numpy as np
import torch

from .base import DiffusionModel, as_float32
from .sampling import VP_SOLVERS
from .schedules import index_grid, time_grid, vp_alpha_sigma


class _VPDiffusion(DiffusionModel):
    solvers = tuple(s for s in VP_SOLVERS if s not in ("euler", "heun"))
    default_solver = "ddpm"
    # the schedule, noising and loss fused into the network's graph
    compiled_losses = ("_denoising_loss",)

    def __init__(self, nn_diffusion, nn_condition=None, fix_mask=None, loss_weight=None, classifier=None,
                 grad_clip_norm=None, ema_rate=0.995, optim_params=None, epsilon: float = 1e-3,
                 noise_schedule: str = "cosine", noise_schedule_params: dict | None = None,
                 predict_noise: bool = True, x_max=None, x_min=None, device="cpu", precision="auto",
                 ema_warmup=True):
        super().__init__(nn_diffusion, nn_condition, fix_mask, loss_weight, classifier, grad_clip_norm,
                         ema_rate, optim_params, x_max, x_min, device, precision, ema_warmup)
        vp_alpha_sigma(0.5, noise_schedule, noise_schedule_params)  # validates the schedule name
        self.epsilon, self.predict_noise = epsilon, predict_noise
        self.noise_schedule, self.noise_schedule_params = noise_schedule, dict(noise_schedule_params or {})

    def alpha_sigma(self, t):
        return vp_alpha_sigma(t, self.noise_schedule, self.noise_schedule_params)

    def sample_times(self, batch: int) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, x0, cond_emb, condition=None, **kwargs):
        t = self.sample_times(x0.shape[0])
        return self._denoising_loss(x0, cond_emb, t, torch.randn_like(x0)), {}

    def _denoising_loss(self, x0, cond_emb, t, eps):
        alpha, sigma = (v.float().view(-1, *([1] * (x0.dim() - 1))) for v in self.alpha_sigma(t))
        x_t = self.inpaint(alpha * x0 + sigma * eps, x0)
        out = self.model["diffusion"](x_t, t.float(), cond_emb).float()
        target = eps if self.predict_noise else x0
        return self.weighted((out - target) ** 2).mean()

    def predict_x0(self, net, x, alpha, sigma, noise, cond_emb):
        out = net["diffusion"](x, noise, cond_emb)
        return self.scale(torch.sub(x, out, alpha=sigma), 1.0 / alpha) if self.predict_noise else as_float32(out)

    def hparams(self):
        return {"noise_schedule": self.noise_schedule, "predict_noise": self.predict_noise}

    def _grid_from_times(self, times: np.ndarray):
        alphas, sigmas = self.alpha_sigma(torch.from_numpy(times))
        alphas, sigmas = alphas.tolist(), sigmas.tolist()
        alphas[-1], sigmas[-1] = 1.0, 0.0  # the clean end
        return alphas, sigmas, times.tolist()


class DiscreteDiffusionSDE(_VPDiffusion):
    """VP diffusion on `diffusion_steps` discrete times; sample with 1 <= sample_steps <= diffusion_steps."""

    def __init__(self, nn_diffusion, nn_condition=None, fix_mask=None, loss_weight=None, classifier=None,
                 grad_clip_norm=None, diffusion_steps: int = 1000, ema_rate=0.995, optim_params=None,
                 epsilon: float = 1e-3, noise_schedule: str = "cosine", noise_schedule_params=None,
                 predict_noise: bool = True, x_max=None, x_min=None, device="cpu", precision="auto",
                 ema_warmup=True):
        if not isinstance(diffusion_steps, int) or diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be a positive int, got {diffusion_steps!r}")
        super().__init__(nn_diffusion, nn_condition, fix_mask, loss_weight, classifier, grad_clip_norm,
                         ema_rate, optim_params, epsilon, noise_schedule, noise_schedule_params, predict_noise,
                         x_max, x_min, device, precision, ema_warmup)
        self.diffusion_steps = diffusion_steps

    def sample_times(self, batch):
        i = torch.randint(1, self.diffusion_steps + 1, (batch,), device=self.device)
        return i.double() / self.diffusion_steps

    def max_sample_steps(self):
        return self.diffusion_steps

    def sample_grid(self, sample_steps, sample_step_schedule):
        idx = index_grid(sample_steps, self.diffusion_steps, sample_step_schedule)
        return self._grid_from_times(idx / self.diffusion_steps)

    def hparams(self):
        return {**super().hparams(), "diffusion_steps": self.diffusion_steps}


class ContinuousDiffusionSDE(_VPDiffusion):
    """VP diffusion in continuous time; any number of sample steps."""

    def sample_times(self, batch):
        return torch.rand(batch, device=self.device, dtype=torch.float64) * (1 - self.epsilon) + self.epsilon

    def sample_grid(self, sample_steps, sample_step_schedule):
        return self._grid_from_times(time_grid(sample_steps, sample_step_schedule))
