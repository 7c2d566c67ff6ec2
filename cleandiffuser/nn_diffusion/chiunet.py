import torch
import torch.nn as nn

from ..utils.activations import Mish
from .base import BaseNNDiffusion
from .conv import Conv1d
from .jannerunet import Conv1dBlock, build_unet_stages, check_horizon, unet_pass, unet_widths


class FiLMResidualBlock(nn.Module):
    """Two Conv1dBlocks with FiLM in between: h = scale * h + bias, (scale, bias) per channel
    from Linear(Mish(cond)) (bias only if not predict_scale); dropout before the second conv.
    x: (B, in_ch, L), cond: (B, cond_dim) -> (B, out_ch, L)."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int, n_groups: int,
                 predict_scale: bool, dropout: float):
        super().__init__()
        self.predict_scale = predict_scale
        self.conv1 = Conv1dBlock(in_ch, out_ch, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)
        self.film = nn.Sequential(Mish(), nn.Linear(cond_dim, out_ch * (2 if predict_scale else 1)))
        self.drop = nn.Dropout(dropout)
        self.skip = Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h, f = self.conv1(x), self.film(cond)[:, :, None]
        if self.predict_scale:
            scale, bias = f.chunk(2, 1)
            h = scale * h + bias
        else:
            h = h + f
        return self.conv2(self.drop(h)) + self.skip(x)


class ChiUNet1d(BaseNNDiffusion):
    """Diffusion Policy's (Chi et al., 2023) conditional 1D U-Net with FiLM.

    x: (B, horizon, act_dim), noise: (B,) (or (B, 2) after enable_target_time()),
    condition: anything with To * obs_dim numbers per sample, e.g. (B, To, obs_dim),
    (B, To * obs_dim) or an encoder's (B, To * obs_dim) feature; None is the same as zeros.
    -> (B, horizon, act_dim).
    Every residual block is FiLM-conditioned on concat[map_noise(noise), flat condition]
    (emb_dim + To * obs_dim wide). Channel widths are model_dim * cumprod(dim_mult): the default
    (1, 2, 2) gives DP's 256, 512, 1024. The horizon must be divisible by 2^(len(dim_mult) - 1).
    obs_as_global_cond=False is DP's inpainting variant: x is the joint trajectory
    (B, horizon, act_dim + obs_dim), FiLM sees only the time embedding and condition must be None.
    """

    def __init__(self, act_dim: int, obs_dim: int, To: int, model_dim: int = 256, emb_dim: int = 256,
                 kernel_size: int = 5, cond_predict_scale: bool = True, obs_as_global_cond: bool = True,
                 dim_mult=(1, 2, 2), n_groups: int = 8, dropout: float = 0.0,
                 timestep_emb_type: str = "positional", timestep_emb_params: dict | None = None):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        self.dim_mult = tuple(dim_mult)
        self.obs_as_global_cond = obs_as_global_cond
        self.global_dim = To * obs_dim if obs_as_global_cond else 0
        in_dim = act_dim if obs_as_global_cond else act_dim + obs_dim
        cond_dim = emb_dim + self.global_dim
        dims = [in_dim] + unet_widths(model_dim, self.dim_mult)
        build_unet_stages(self, dims, lambda i, o: FiLMResidualBlock(
            i, o, cond_dim, kernel_size, n_groups, cond_predict_scale, dropout))
        self.final = nn.Sequential(Conv1dBlock(dims[1], dims[1], kernel_size, n_groups),
                                   Conv1d(dims[1], in_dim, 1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        check_horizon(x.shape[1], self.dim_mult)
        cond = self.map_noise(noise)
        if self.obs_as_global_cond:
            if condition is None:
                condition = x.new_zeros(x.shape[0], self.global_dim)
            condition = condition.reshape(x.shape[0], -1)
            if condition.shape[1] != self.global_dim:
                raise ValueError(f"condition has {condition.shape[1]} features per sample, "
                                 f"expected To * obs_dim = {self.global_dim}")
            cond = torch.cat([cond, condition], -1)
        elif condition is not None:
            raise ValueError("obs_as_global_cond=False: observations are part of x; condition must be None")
        return unet_pass(self, x, cond)
