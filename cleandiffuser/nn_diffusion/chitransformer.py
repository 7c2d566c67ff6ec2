import torch
import torch.nn as nn

from ..utils.activations import Mish
from .base import BaseNNDiffusion


class ChiTransformer(BaseNNDiffusion):
    """Diffusion Policy's (Chi et al., 2023) transformer denoiser.

    x: (B, horizon, act_dim) with horizon <= Ta, noise: (B,) (or (B, 2) after enable_target_time()),
    condition: (B, To, obs_dim) or (B, To * obs_dim), or None -> (B, horizon, act_dim).
    A pre-norm TransformerDecoder runs over the action tokens with causal self-attention. Its
    memory is [time token, obs tokens], each with a learned positional embedding, passed through a
    token-wise Mish MLP encoder (DP's default); action i attends to the time token and obs tokens
    0..i (DP's causal memory mask). With condition=None the memory is the time token alone.
    The time embedding is d_model wide (emb_dim = d_model).
    """

    def __init__(self, act_dim: int, obs_dim: int, Ta: int, To: int, d_model: int = 256,
                 nhead: int = 4, num_layers: int = 8, p_drop_emb: float = 0.0,
                 p_drop_attn: float = 0.3, timestep_emb_type: str = "positional",
                 timestep_emb_params: dict | None = None):
        super().__init__(d_model, timestep_emb_type, timestep_emb_params)
        self.Ta, self.To, self.obs_dim = Ta, To, obs_dim
        self.act_emb = nn.Linear(act_dim, d_model)
        self.obs_emb = nn.Linear(obs_dim, d_model)
        self.act_pos = nn.Parameter(torch.randn(1, Ta, d_model) * 0.02)
        self.mem_pos = nn.Parameter(torch.randn(1, 1 + To, d_model) * 0.02)
        self.drop = nn.Dropout(p_drop_emb)
        self.mem_encoder = nn.Sequential(nn.Linear(d_model, 4 * d_model), Mish(),
                                         nn.Linear(4 * d_model, d_model))
        layer = nn.TransformerDecoderLayer(d_model, nhead, 4 * d_model, p_drop_attn,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, act_dim))
        i = torch.arange(Ta)[:, None]
        # True = may not attend.
        self.register_buffer("causal_mask", torch.arange(Ta)[None] > i, persistent=False)
        self.register_buffer("memory_mask", torch.arange(1 + To)[None] > i + 1, persistent=False)

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        b, horizon = x.shape[:2]
        if horizon > self.Ta:
            raise ValueError(f"horizon={horizon} exceeds Ta={self.Ta} (the positional table size)")
        mem = self.map_noise(noise)[:, None]
        if condition is not None:
            obs = self.obs_emb(condition.reshape(b, self.To, self.obs_dim))
            mem = torch.cat([mem, obs], 1)
        n_mem = mem.shape[1]
        mem = self.mem_encoder(self.drop(mem + self.mem_pos[:, :n_mem]))
        h = self.drop(self.act_emb(x) + self.act_pos[:, :horizon])
        h = self.decoder(h, mem, tgt_mask=self.causal_mask[:horizon, :horizon],
                         memory_mask=self.memory_mask[:horizon, :n_mem])
        return self.head(h)
