import torch
import torch.nn as nn

from ..utils.activations import mish
from .base import BaseNNDiffusion


class _Dense(nn.Module):
    """Mish(Linear(h) + Linear(emb)); h: (B, in_dim), emb: (B, emb_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, emb_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.emb = nn.Linear(emb_dim, out_dim)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return mish(self.fc(h) + self.emb(emb))


class SfBCUNet(BaseNNDiffusion):
    """SfBC's (Chen et al., 2023) MLP U-Net for flat actions.

    x: (B, act_dim), noise: (B,) (or (B, 2) after enable_target_time()),
    condition: (B, emb_dim) or None -> (B, act_dim).
    The condition is added to the time embedding (so it must be emb_dim wide), and that vector
    is injected into every dense block. Down path act_dim -> hidden_dims[0] -> ... ->
    hidden_dims[-1], a middle block, then an up path that concatenates the matching skip at each
    level, ending in a Linear to act_dim.
    """

    def __init__(self, act_dim: int, emb_dim: int = 64, hidden_dims=(512, 256, 128),
                 timestep_emb_type: str = "positional", timestep_emb_params: dict | None = None):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        dims = [act_dim, *hidden_dims]
        self.downs = nn.ModuleList(_Dense(i, o, emb_dim) for i, o in zip(dims[:-1], dims[1:]))
        self.mid = _Dense(dims[-1], dims[-1], emb_dim)
        # up level k: concat[h (dims[k+1]), skip k (dims[k+1])] -> dims[k]; the last one is plain.
        self.ups = nn.ModuleList(_Dense(2 * dims[k + 1], dims[k], emb_dim)
                                 for k in reversed(range(1, len(hidden_dims))))
        self.out = nn.Linear(2 * dims[1], act_dim)

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise)
        if condition is not None:
            emb = emb + condition
        h, skips = x, []
        for block in self.downs:
            h = block(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for block in self.ups:
            h = block(torch.cat([h, skips.pop()], -1), emb)
        return self.out(torch.cat([h, skips.pop()], -1))
