import torch
import torch.nn as nn

from .base import BaseNNDiffusion


class PearceTransformer(BaseNNDiffusion):
    """Transformer denoiser of Pearce et al. (2023).

    x: (B, act_dim), noise: (B,) (or (B, 2) after enable_target_time()),
    condition: (B, To, emb_dim) or (B, To * emb_dim), or None (same as zeros) -> (B, act_dim).
    Tokens [t, x, obs_1..obs_To] are projected to trans_emb_dim, get learned positional
    embeddings, pass 4 pre-norm TransformerEncoder layers, and the x token is read out.
    """

    def __init__(self, act_dim: int, To: int = 1, emb_dim: int = 128, trans_emb_dim: int = 64,
                 nhead: int = 16, timestep_emb_type: str = "fourier",
                 timestep_emb_params: dict | None = None):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        self.To = To
        d = trans_emb_dim
        self.t_proj = nn.Linear(emb_dim, d)
        self.x_proj = nn.Sequential(nn.Linear(act_dim, emb_dim), nn.LeakyReLU(), nn.Linear(emb_dim, d))
        self.obs_proj = nn.Linear(emb_dim, d)
        self.pos_emb = nn.Parameter(torch.randn(1, 2 + To, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, nhead, dim_feedforward=4 * d, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, act_dim))

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if condition is None:
            condition = x.new_zeros(b, self.To, self.emb_dim)
        tokens = torch.cat([self.t_proj(self.map_noise(noise))[:, None], self.x_proj(x)[:, None],
                            self.obs_proj(condition.reshape(b, self.To, self.emb_dim))], 1)
        return self.out(self.encoder(tokens + self.pos_emb)[:, 1])
