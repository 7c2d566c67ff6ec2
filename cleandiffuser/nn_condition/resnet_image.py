"""ResNet-18-style image encoder with GroupNorm and spatial-softmax keypoint pooling.

Input images are float tensors that have already been normalized by the dataset normalizer
(typically to [-1, 1]; [0, 1] works as well). The encoder never rescales its input: integer
(e.g. uint8) images are rejected so that a missing normalization step fails loudly.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import BaseNNCondition

RESNET18_CHANNELS = (64, 128, 256, 512)


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = max(1, channels // 16)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def _norm(channels: int, use_group_norm: bool) -> nn.Module:
    return _group_norm(channels) if use_group_norm else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """3x3 conv - norm - ReLU - 3x3 conv - norm, plus (projected) identity shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, use_group_norm: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = _norm(out_ch, use_group_norm)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = _norm(out_ch, use_group_norm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          _norm(out_ch, use_group_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class SpatialSoftmax(nn.Module):
    """Keypoint pooling: a 1x1 conv maps C channels to K heatmaps, each is softmax-normalized
    over its H*W positions (divided by `temperature`), and the expected (x, y) image coordinate
    under each heatmap is returned: (B, C, H, W) -> (B, 2K) laid out as [x_1, y_1, ..., x_K, y_K].
    Coordinates are pixel centres on a [-1, 1] grid (x left -> right, y top -> bottom), so every
    output lies in [-1, 1].
    """

    def __init__(self, in_channels: int, num_kp: int = 32, temperature: float = 1.0,
                 learnable_temperature: bool = False):
        super().__init__()
        self.num_kp = num_kp
        self.keypoint_conv = nn.Conv2d(in_channels, num_kp, 1)
        log_t = torch.tensor(float(temperature)).log()
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @staticmethod
    def grid(h: int, w: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype) if h > 1 else torch.zeros(1, device=device, dtype=dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype) if w > 1 else torch.zeros(1, device=device, dtype=dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return gx.reshape(-1), gy.reshape(-1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        heat = self.keypoint_conv(feat).flatten(2)  # (B, K, H*W)
        attn = torch.softmax(heat / self.log_temperature.exp(), dim=-1)
        gx, gy = self.grid(h, w, feat.device, attn.dtype)
        kx = (attn * gx).sum(-1)
        ky = (attn * gy).sum(-1)
        return torch.stack([kx, ky], dim=-1).reshape(b, 2 * self.num_kp)


def _crop(x: torch.Tensor, size: tuple[int, int], random: bool) -> torch.Tensor:
    """Crops (N, C, H, W) to (N, C, *size): an independent random window per image, or the centre."""
    n, _, h, w = x.shape
    ch, cw = size
    if (ch, cw) == (h, w):
        return x
    if ch > h or cw > w:
        raise ValueError(f"crop size {size} larger than image {(h, w)}")
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[:, :, top:top + ch, left:left + cw]
    top = torch.randint(0, h - ch + 1, (n,), device=x.device)
    left = torch.randint(0, w - cw + 1, (n,), device=x.device)
    rows = (top[:, None] + torch.arange(ch, device=x.device))[:, :, None]  # (N, ch, 1)
    cols = (left[:, None] + torch.arange(cw, device=x.device))[:, None, :]  # (N, 1, cw)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous()


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ResNet18ImageCondition(BaseNNCondition):
    """ResNet-18-style image encoder -> (B, emb_dim), or (B, To, emb_dim) for (B, To, C, H, W).

    Architecture: 7x7/2 conv stem + norm + ReLU + 3x3/2 max-pool, then four stages of two
    BasicBlocks with widths `channels` (default ResNet-18's 64, 128, 256, 512, scaled by `width`),
    the last three downsampling by 2. GroupNorm (channels // 16 groups) replaces BatchNorm unless
    `use_group_norm=False`. Pooling: SpatialSoftmax with `num_kp` keypoints (2 * num_kp features)
    when `spatial_softmax=True`, else global average pooling; then a Linear to `emb_dim`.

    Augmentation: with `crop_size` set, a random crop per image in training mode and the centre
    crop in eval mode (so the network always sees crop_size images).

    Images: float (B, C, H, W) or (B, To, C, H, W) with (C, H, W) = (in_channel, *image_sz),
    already normalized (see module docstring). Default emb_dim 256; dropout (CFG) default 0.
    """

    def __init__(self, image_sz: int | Sequence[int] = 84, in_channel: int = 3, emb_dim: int = 256,
                 crop_size: int | Sequence[int] | None = None, use_group_norm: bool = True,
                 spatial_softmax: bool = True, num_kp: int = 32, channels: Sequence[int] | None = None,
                 width: float = 1.0, dropout: float = 0.0):
        super().__init__(dropout)
        self.image_sz = _pair(image_sz)
        self.in_channel, self.emb_dim, self.out_dim = in_channel, emb_dim, emb_dim
        self.crop_size = _pair(crop_size) if crop_size is not None else None
        if channels is None:
            channels = tuple(max(1, round(c * width)) for c in RESNET18_CHANNELS)
        if len(channels) != 4:
            raise ValueError(f"channels must have 4 stage widths, got {channels}")
        self.channels = tuple(int(c) for c in channels)

        c0 = self.channels[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channel, c0, 7, 2, 3, bias=False), _norm(c0, use_group_norm),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        stages, prev = [], c0
        for i, c in enumerate(self.channels):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(prev, c, stride, use_group_norm),
                                        BasicBlock(c, c, 1, use_group_norm)))
            prev = c
        self.stages = nn.Sequential(*stages)
        if spatial_softmax:
            self.pool: nn.Module = SpatialSoftmax(prev, num_kp)
            pooled = 2 * num_kp
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            pooled = prev
        self.proj = nn.Linear(pooled, emb_dim)

    def _prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if not torch.is_floating_point(images):
            raise TypeError(f"images must be float and already normalized, got dtype {images.dtype}")
        if images.dim() not in (4, 5):
            raise ValueError(f"expected (B, C, H, W) or (B, To, C, H, W), got {tuple(images.shape)}")
        lead = tuple(images.shape[:-3])
        x = images.reshape(-1, *images.shape[-3:])
        if x.shape[1] != self.in_channel or tuple(x.shape[2:]) != self.image_sz:
            raise ValueError(f"expected images of shape ({self.in_channel}, {self.image_sz[0]}, "
                             f"{self.image_sz[1]}), got {tuple(x.shape[1:])}")
        if self.crop_size is not None:
            x = _crop(x, self.crop_size, random=self.training)
        return x, lead

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features before the final Linear: (..., 2 * num_kp) keypoints or (..., C)."""
        x, lead = self._prepare(images)
        return self.pool(self.stages(self.stem(x))).reshape(*lead, -1)

    def encode(self, condition: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(condition))
