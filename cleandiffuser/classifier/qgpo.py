import torch

from .base import BaseClassifier


class QGPOClassifier(BaseClassifier):
    """Contrastive energy guidance of QGPO (Lu et al. 2023, "Contrastive Energy Prediction").

    The network f_phi(x_t, t, s) (e.g. MLPNNClassifier(act_dim, cond_dim=obs_dim)) is the
    *negative* intermediate energy, so logp = f_phi and guidance follows grad_x f_phi.

    update(x_t, noise, energy_target, condition):
        x_t: (B, K, *act_shape) K candidate actions per state (sampled from the behaviour policy),
             all noised with the same noise level noise: (B,);
        energy_target: (B, K) = beta * Q(s, a^k) for the *clean* candidates;
        condition: (B, ...) the states s (None for an unconditional network).
        loss = mean_B [ -sum_k softmax_k(energy_target) * log softmax_k(f_phi(x_t^k, t, s)) ],
        minimized when softmax_k(f_phi) = softmax_k(beta * Q).
    logp(x_t, noise, condition) = f_phi(x_t, t, s): (B, 1) for x_t of shape (B, *act_shape).
    """

    def candidate_logits(self, x_t, noise, condition=None, use_ema: bool = False) -> torch.Tensor:
        """f_phi for every candidate: x_t (B, K, *act_shape) -> (B, K)."""
        b, k = x_t.shape[:2]
        if noise.dim() != 1 or noise.shape[0] != b:
            raise ValueError(f"noise must be (B,)={b}, one level shared by all candidates, got {tuple(noise.shape)}")
        cond = None if condition is None else condition.repeat_interleave(k, dim=0)
        f = self.net(use_ema)(x_t.flatten(0, 1), noise.repeat_interleave(k), cond)
        return f.reshape(b, k)

    def loss(self, x_t, noise, energy_target, condition=None):
        logits = self.candidate_logits(x_t, noise, condition)
        weights = torch.softmax(energy_target.to(logits.dtype).reshape(logits.shape), dim=-1)
        return -(weights * torch.log_softmax(logits, dim=-1)).sum(-1).mean()

    def logp(self, x_t, noise, c=None, use_ema: bool = True):
        return self.net(use_ema)(x_t, noise, c)
