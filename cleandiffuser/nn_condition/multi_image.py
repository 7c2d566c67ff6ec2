from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from .base import BaseNNCondition
from .resnet_image import ResNet18ImageCondition


def _parse_shape_meta(shape_meta: Mapping) -> dict[str, tuple[tuple[int, ...], str]]:
    """Accepts {key: shape}, {key: {"shape": shape, "type": "rgb" | "low_dim"}}, or either form
    nested under an "obs" entry (diffusion-policy/robomimic configs). Returns {key: (shape, type)}.
    Without an explicit type, a key whose per-step shape has 3 dims (C, H, W) is an image."""
    if "obs" in shape_meta and isinstance(shape_meta["obs"], Mapping):
        shape_meta = shape_meta["obs"]
    parsed = {}
    for key, spec in shape_meta.items():
        if isinstance(spec, Mapping):
            shape = tuple(int(s) for s in spec["shape"])
            kind = spec.get("type", "rgb" if len(shape) == 3 else "low_dim")
        else:
            shape = tuple(int(s) for s in spec)
            kind = "rgb" if len(shape) == 3 else "low_dim"
        if kind not in ("rgb", "low_dim"):
            raise ValueError(f"{key}: unknown observation type {kind!r}")
        if kind == "rgb" and len(shape) != 3:
            raise ValueError(f"{key}: image shape must be (C, H, W), got {shape}")
        parsed[key] = (shape, kind)
    return parsed


class MultiImageObsCondition(BaseNNCondition):
    """Multi-camera + low-dim observation encoder (Diffusion Policy style).

    shape_meta: per-step shape of every observation key, e.g.
        {"agentview_image": (3, 84, 84), "robot0_eye_in_hand_image": (3, 84, 84), "robot0_eef_pos": (3,)}
    (see `_parse_shape_meta` for the accepted forms). Every image key gets its own
    ResNet18ImageCondition (-> emb_dim per step) unless `share_image_encoder=True`; low-dim keys
    are flattened and concatenated as they are (normalize them beforehand). Per step the feature is
    [image embeddings in shape_meta order..., low-dim values in shape_meta order...] of size
    `feature_dim = n_images * emb_dim + sum(low-dim sizes)`.

    forward(obs_dict, mask=None): values are (B, To, *shape) or (B, *shape) (To = 1); keys not in
    shape_meta are ignored. Returns (B, To * feature_dim) when `flatten=True` (default; the layout
    is step-major: step 0's features first) or (B, To, feature_dim) when `flatten=False`.
    Images: float, already normalized (e.g. [-1, 1]); see resnet_image.py. CFG dropout (`dropout`)
    zeroes a sample's whole embedding; the per-camera encoders themselves never drop.
    """

    def __init__(self, shape_meta: Mapping, emb_dim: int = 256, flatten: bool = True,
                 crop_size: int | Sequence[int] | None = None, use_group_norm: bool = True,
                 spatial_softmax: bool = True, num_kp: int = 32, channels: Sequence[int] | None = None,
                 width: float = 1.0, share_image_encoder: bool = False, dropout: float = 0.0):
        super().__init__(dropout)
        self.meta = _parse_shape_meta(shape_meta)
        self.image_keys = [k for k, (_, t) in self.meta.items() if t == "rgb"]
        self.lowdim_keys = [k for k, (_, t) in self.meta.items() if t == "low_dim"]
        if not self.meta:
            raise ValueError("shape_meta is empty")
        self.emb_dim, self.flatten, self.share_image_encoder = emb_dim, flatten, share_image_encoder

        def make(shape):
            return ResNet18ImageCondition(shape[1:], shape[0], emb_dim, crop_size, use_group_norm,
                                          spatial_softmax, num_kp, channels, width, dropout=0.0)

        if share_image_encoder and self.image_keys:
            shapes = {self.meta[k][0] for k in self.image_keys}
            if len(shapes) != 1:
                raise ValueError(f"share_image_encoder needs equal image shapes, got {shapes}")
            shared = make(self.meta[self.image_keys[0]][0])
            self.image_encoders = nn.ModuleDict({k: shared for k in self.image_keys})
        else:
            self.image_encoders = nn.ModuleDict({k: make(self.meta[k][0]) for k in self.image_keys})
        lowdim = 0
        for k in self.lowdim_keys:
            n = 1
            for s in self.meta[k][0]:
                n *= s
            lowdim += n
        self.feature_dim = len(self.image_keys) * emb_dim + lowdim

    def output_dim(self, To: int = 1) -> int:
        return To * self.feature_dim if self.flatten else self.feature_dim

    def _with_time(self, key: str, x: torch.Tensor) -> torch.Tensor:
        shape = self.meta[key][0]
        if tuple(x.shape[-len(shape):]) != shape:
            raise ValueError(f"{key}: expected trailing shape {shape}, got {tuple(x.shape)}")
        if x.dim() == len(shape) + 1:
            return x[:, None]
        if x.dim() == len(shape) + 2:
            return x
        raise ValueError(f"{key}: expected (B, *{shape}) or (B, To, *{shape}), got {tuple(x.shape)}")

    def encode(self, condition: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self.meta if k not in condition]
        if missing:
            raise KeyError(f"observation dict lacks {missing}")
        obs = {k: self._with_time(k, condition[k]) for k in self.meta}
        b, to = next(iter(obs.values())).shape[:2]
        feats = []
        if self.share_image_encoder and self.image_keys:
            enc = self.image_encoders[self.image_keys[0]]
            imgs = torch.stack([obs[k] for k in self.image_keys], dim=2)  # (B, To, V, C, H, W)
            feats.append(enc(imgs.flatten(1, 2)).reshape(b, to, -1))
        else:
            feats += [self.image_encoders[k](obs[k]) for k in self.image_keys]
        feats += [obs[k].reshape(b, to, -1).to(feats[0].dtype if feats else obs[k].dtype)
                  for k in self.lowdim_keys]
        for f in feats:
            if f.shape[:2] != (b, to):
                raise ValueError("all observation keys must share batch size and horizon To")
        out = torch.cat(feats, dim=-1)
        return out.flatten(1) if self.flatten else out
