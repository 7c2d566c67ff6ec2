import torch
import torch.nn.functional as F

from .base import BaseClassifier


def _match(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshapes a (B,) / (B, out_dim) target to like's (B, out_dim) shape."""
    y = torch.as_tensor(y, dtype=like.dtype, device=like.device)
    return y.reshape(like.shape) if y.numel() == like.numel() else y.expand_as(like)


class MSEClassifier(BaseClassifier):
    """Target-value guidance with an *unconditional* regressor f(x_t, t) -> (B, out_dim).

    update(x_t, noise, y): fits f(x_t, t) to y ((B,) or (B, out_dim)) by mean squared error.
    logp(x_t, noise, c) = -||f(x_t, t) - c||^2 / temperature, shape (B, 1), where c ((B,),
    (B, out_dim) or broadcastable) is the *target value*: guidance pulls samples toward those whose
    predicted value equals c. c is required. The network gets no condition (c is not an input).
    """

    def __init__(self, model, temperature: float = 1.0, ema_rate: float = 0.995,
                 grad_clip_norm: float | None = None, optim_params: dict | None = None, device="cpu"):
        super().__init__(model, ema_rate, grad_clip_norm, optim_params, device)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def loss(self, x_t, noise, y, condition=None):
        if condition is not None:
            raise ValueError("MSEClassifier regresses an unconditional f(x_t, t); pass condition=None")
        pred = self.model(x_t, noise)
        return F.mse_loss(pred, _match(y, pred))

    def logp(self, x_t, noise, c=None, use_ema: bool = True):
        if c is None:
            raise ValueError("MSEClassifier.logp needs the target value c")
        pred = self.net(use_ema)(x_t, noise)
        return -((pred - _match(c, pred)) ** 2).sum(-1, keepdim=True) / self.temperature


class CumRewClassifier(BaseClassifier):
    """Return (cumulative reward / value) guidance, as in Diffuser: a regressor f(x_t, t[, s]).

    update(x_t, noise, y, condition=None): fits f(x_t, t, condition) to the return y by MSE.
    logp(x_t, noise, c=None) = f(x_t, t, c) summed over out_dim, shape (B, 1): guidance climbs the
    predicted return. c is forwarded as the network condition only if the network was built with a
    cond_dim (MLPNNClassifier(cond_dim=...)); for an unconditional network c is ignored.
    """

    def _cond(self, c):
        return c if getattr(self.model, "cond_dim", 0) else None

    def loss(self, x_t, noise, y, condition=None):
        pred = self.model(x_t, noise, self._cond(condition))
        return F.mse_loss(pred, _match(y, pred))

    def logp(self, x_t, noise, c=None, use_ema: bool = True):
        return self.net(use_ema)(x_t, noise, self._cond(c)).sum(-1, keepdim=True)
