"""Training / inference wrappers around a BaseNNClassifier for classifier guidance.

Guidance contract (what the diffusion models call while sampling):

    logp, grad = classifier.gradients(x_t, noise, condition_cg)

x_t: (B, *x_shape) current noisy sample; noise: (B,) noise coordinate on the 1000 scale, the same
one the denoiser receives; condition_cg: whatever the concrete classifier's `logp` takes as `c`
(may be None). Returns logp (B, 1), detached, and grad = d sum(logp) / d x_t shaped like x_t,
detached; it is computed under torch.enable_grad(), so it works inside torch.no_grad() sampling
loops. The sampler adds `w * grad` (in its own parametrization) to steer toward high logp.
`logp` and `gradients` use the EMA network by default (use_ema=False for the online one).
"""
from copy import deepcopy

import torch
import torch.nn as nn

from cleandiffuser.nn_classifier import BaseNNClassifier

DEFAULT_OPTIM_PARAMS = {"lr": 3e-4, "weight_decay": 0.0}


class BaseClassifier(nn.Module):
    """Holds `model` (trained), `model_ema` (used for guidance) and an AdamW optimizer.

    ema_rate: model_ema <- ema_rate * model_ema + (1 - ema_rate) * model after every update.
    grad_clip_norm: clip the global gradient norm if set. optim_params: AdamW kwargs
    (default lr=3e-4, weight_decay=0). Subclasses implement `loss` and `logp`.
    """

    def __init__(self, model: BaseNNClassifier, ema_rate: float = 0.995, grad_clip_norm: float | None = None,
                 optim_params: dict | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        if not 0.0 <= ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in [0, 1], got {ema_rate}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model_ema = deepcopy(self.model).requires_grad_(False).eval()
        self.ema_rate, self.grad_clip_norm = ema_rate, grad_clip_norm
        self.optimizer = torch.optim.AdamW(self.model.parameters(), **{**DEFAULT_OPTIM_PARAMS, **(optim_params or {})})

    def train(self, mode: bool = True):
        super().train(mode)
        self.model_ema.eval()
        return self

    @torch.no_grad()
    def ema_update(self) -> None:
        for p_ema, p in zip(self.model_ema.parameters(), self.model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - self.ema_rate)
        for b_ema, b in zip(self.model_ema.buffers(), self.model.buffers()):
            b_ema.copy_(b)

    def net(self, use_ema: bool = True) -> BaseNNClassifier:
        return self.model_ema if use_ema else self.model

    # ---- training -------------------------------------------------------------------------------
    def loss(self, x_t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor,
             condition: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def update(self, x_t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor,
               condition: torch.Tensor | None = None) -> dict:
        """One AdamW step on `loss(x_t, noise, y, condition)` followed by an EMA update."""
        self.model.train()
        loss = self.loss(x_t, noise, y, condition)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        info = {"loss": loss.item()}
        if self.grad_clip_norm is not None:
            info["grad_norm"] = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm).item()
        self.optimizer.step()
        self.ema_update()
        return info

    # ---- guidance -------------------------------------------------------------------------------
    def logp(self, x_t: torch.Tensor, noise: torch.Tensor, c=None, use_ema: bool = True) -> torch.Tensor:
        """(B, 1) log-probability / negative energy whose x_t-gradient guides sampling."""
        raise NotImplementedError

    def gradients(self, x_t: torch.Tensor, noise: torch.Tensor, c=None,
                  use_ema: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(logp (B, 1), d sum(logp) / d x_t shaped like x_t), both detached; works under no_grad."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            logp = self.logp(x, noise.detach(), c, use_ema=use_ema)
            grad, = torch.autograd.grad(logp.sum(), x)
        return logp.detach(), grad.detach()

    # ---- checkpoints ----------------------------------------------------------------------------
    def save(self, path: str) -> None:
        torch.save({"model": self.model.state_dict(), "model_ema": self.model_ema.state_dict(),
                    "optimizer": self.optimizer.state_dict()}, path)

    def load(self, path: str) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(ckpt["model"])
        self.model_ema.load_state_dict(ckpt["model_ema"])
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
