import itertools
import operator

import torch
import torch.nn as nn

from ..utils.activations import Mish
from .base import BaseNNDiffusion
from .conv import Conv1d, ConvTranspose1d


class Conv1dBlock(nn.Sequential):
    """Conv1d (same padding) -> GroupNorm -> Mish on (B, C, L)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int = 8):
        super().__init__(Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                         nn.GroupNorm(n_groups, out_ch), Mish())


def downsample1d(ch: int) -> nn.Module:
    """Halves the length: (B, ch, L) -> (B, ch, L / 2)."""
    return Conv1d(ch, ch, 3, stride=2, padding=1)


def upsample1d(ch: int) -> nn.Module:
    """Doubles the length: (B, ch, L) -> (B, ch, 2L)."""
    return ConvTranspose1d(ch, ch, 4, stride=2, padding=1)


def unet_widths(model_dim: int, dim_mult) -> list[int]:
    """Channel widths per level: model_dim * cumprod(dim_mult), e.g. 32, (1, 2, 2, 2) -> 32, 64,
    128, 256 (Diffuser's (1, 2, 4, 8))."""
    return [model_dim * m for m in itertools.accumulate(dim_mult, operator.mul)]


def check_horizon(horizon: int, dim_mult) -> None:
    """A U-Net with len(dim_mult) levels halves the length len(dim_mult) - 1 times."""
    factor = 2 ** (len(dim_mult) - 1)
    if horizon % factor:
        raise ValueError(f"horizon={horizon} is not divisible by {factor} = 2^(len(dim_mult) - 1) "
                         f"for dim_mult={tuple(dim_mult)}; pad the horizon or use fewer levels")


class ResidualTemporalBlock(nn.Module):
    """Two Conv1dBlocks; Linear(Mish(emb)) is added per channel after the first.
    x: (B, in_ch, L), emb: (B, emb_dim) -> (B, out_ch, L)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, kernel_size: int):
        super().__init__()
        self.conv1 = Conv1dBlock(in_ch, out_ch, kernel_size)
        self.conv2 = Conv1dBlock(out_ch, out_ch, kernel_size)
        self.emb = nn.Sequential(Mish(), nn.Linear(emb_dim, out_ch))
        self.skip = Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) + self.emb(emb)[:, :, None]
        return self.conv2(h) + self.skip(x)


class JannerUNet1d(BaseNNDiffusion):
    """Diffuser's (Janner et al., 2022) temporal U-Net.

    x: (B, horizon, in_dim), noise: (B,) (or (B, 2) after enable_target_time()),
    condition: (B, emb_dim) or None -> (B, horizon, in_dim).
    The condition is added to the time embedding, so it must be emb_dim wide. The horizon must be
    divisible by 2^(len(dim_mult) - 1) (ValueError otherwise). dim_mult is cumulative: level k
    has model_dim * prod(dim_mult[:k+1]) channels. GroupNorm uses 8 groups, so model_dim must be
    divisible by 8.
    """

    def __init__(self, in_dim: int, model_dim: int = 32, emb_dim: int = 32, kernel_size: int = 3,
                 dim_mult=(1, 2, 2, 2), timestep_emb_type: str = "positional",
                 timestep_emb_params: dict | None = None):
        super().__init__(emb_dim, timestep_emb_type, timestep_emb_params)
        self.dim_mult = tuple(dim_mult)
        dims = [in_dim] + unet_widths(model_dim, self.dim_mult)
        build_unet_stages(self, dims, lambda i, o: ResidualTemporalBlock(i, o, emb_dim, kernel_size))
        self.final = nn.Sequential(Conv1dBlock(dims[1], dims[1], 5), Conv1d(dims[1], in_dim, 1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        check_horizon(x.shape[1], self.dim_mult)
        emb = self.map_noise(noise)
        if condition is not None:
            emb = emb + condition
        return unet_pass(self, x, emb)


def build_unet_stages(unet: nn.Module, dims: list[int], block) -> None:
    """Give `unet` its `downs`, `mids` and `ups` ModuleLists for channel widths dims (dims[0] = input);
    block(in_ch, out_ch) makes one conditioned residual block."""
    pairs = list(zip(dims[:-1], dims[1:]))
    unet.downs = nn.ModuleList(
        nn.ModuleList([block(i, o), block(o, o), downsample1d(o) if k < len(pairs) - 1 else nn.Identity()])
        for k, (i, o) in enumerate(pairs))
    unet.mids = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
    unet.ups = nn.ModuleList(
        nn.ModuleList([block(2 * o, i), block(i, i), upsample1d(i)]) for i, o in reversed(pairs[1:]))


def unet_pass(unet: nn.Module, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Down path with skips, middle, up path; x (B, horizon, C) -> (B, horizon, C_out).
    `unet` has `downs` [(block, block, downsample)], `mids` [block], `ups` [(block, block, upsample)], `final`."""
    h, skips = x.transpose(1, 2), []
    for b1, b2, down in unet.downs:
        h = b2(b1(h, cond), cond)
        skips.append(h)
        h = down(h)
    for b in unet.mids:
        h = b(h, cond)
    for b1, b2, up in unet.ups:
        h = up(b2(b1(torch.cat([h, skips.pop()], 1), cond), cond))
    return unet.final(h).transpose(1, 2)
