"""Observation encoder of the chunked-action policies, and the `shape_meta` convention.

shape_meta (as in Diffusion Policy / Consistency Policy configs)::

    {"obs": {"robot0_eef_pos": {"shape": [3], "type": "low_dim"},
             "agentview_image": {"shape": [3, 84, 84], "type": "rgb"}, ...},
     "action": {"shape": [7]}}

Images are channels-first in shape_meta (what the encoder sees); the data files and the
environment give them channels-last (H, W, C) uint8, which the policy converts.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..nn_condition.base import BaseNNCondition
from ..nn_condition.mlp import build_mlp
from ..nn_condition.multi_image import MultiImageObsCondition
from ..utils.activations import Mish

__all__ = ["OBS_TYPES", "ObsEncoder", "parse_shape_meta"]

OBS_TYPES = ("low_dim", "rgb")


def _plain(x):
    """OmegaConf containers -> plain Python (dict / list)."""
    try:
        from omegaconf import OmegaConf
        if OmegaConf.is_config(x):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return x


def parse_shape_meta(shape_meta) -> dict:
    """Validate and normalize shape_meta to {"obs": {key: {"shape": [...], "type": ...}},
    "action": {"shape": [A]}} (plain lists and strings; obs keys keep their order).
    A missing obs "type" is "rgb" for 3-dim shapes, else "low_dim"."""
    shape_meta = _plain(shape_meta)
    if not isinstance(shape_meta, Mapping) or "obs" not in shape_meta or "action" not in shape_meta:
        raise ValueError("shape_meta must be a mapping with 'obs' and 'action' entries, got "
                         f"{shape_meta!r:.200}")
    obs = shape_meta["obs"]
    if not isinstance(obs, Mapping) or not obs:
        raise ValueError("shape_meta.obs must be a non-empty mapping {key: {shape: [...], type: low_dim|rgb}}")
    out_obs = {}
    for key, spec in obs.items():
        if isinstance(spec, Mapping):
            if "shape" not in spec:
                raise ValueError(f"shape_meta.obs.{key} has no 'shape'")
            shape, kind = spec["shape"], spec.get("type")
        else:
            shape, kind = spec, None
        try:
            shape = [int(s) for s in shape]
        except (TypeError, ValueError):
            raise ValueError(f"shape_meta.obs.{key}.shape must be a list of ints, got {shape!r}") from None
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"shape_meta.obs.{key}.shape must be non-empty and positive, got {shape}")
        kind = kind or ("rgb" if len(shape) == 3 else "low_dim")
        if kind not in OBS_TYPES:
            raise ValueError(f"shape_meta.obs.{key}.type={kind!r} is not one of {OBS_TYPES}")
        if kind == "rgb" and len(shape) != 3:
            raise ValueError(f"shape_meta.obs.{key}: an rgb shape must be [C, H, W], got {shape}")
        if kind == "low_dim" and len(shape) != 1:
            raise ValueError(f"shape_meta.obs.{key}: a low_dim shape must be [D], got {shape}")
        out_obs[str(key)] = {"shape": shape, "type": kind}
    act = shape_meta["action"]
    act_shape = act.get("shape") if isinstance(act, Mapping) else act
    try:
        act_shape = [int(s) for s in act_shape]
    except (TypeError, ValueError):
        raise ValueError(f"shape_meta.action.shape must be [A], got {act_shape!r}") from None
    if len(act_shape) != 1 or act_shape[0] < 1:
        raise ValueError(f"shape_meta.action.shape must be [A] with A >= 1, got {act_shape}")
    return {"obs": out_obs, "action": {"shape": act_shape}}


class ObsEncoder(BaseNNCondition):
    """Observation history -> one feature vector per sample.

    Input: {key: (B, To, *shape)} normalized (low-dim in [-1, 1] by the dataset normalizer, images
    float in [-1, 1], channels-first). Each rgb key gets a ResNet-18-style GroupNorm encoder with
    spatial-softmax pooling (`image_emb_dim` features per frame; random crop to `crop_size` in
    training, centre crop in eval mode); low-dim keys are used as they are. The To frames'
    features are concatenated (step-major) and, when `mlp` lists hidden widths, passed through an
    MLP to `feature_dim` features; with `mlp=None` the encoder is the identity on low-dim inputs
    (Diffusion Policy's low-dim setting). Output: (B, out_dim).
    """

    def __init__(self, shape_meta: Mapping, n_obs_steps: int, mlp: Sequence[int] | None = None,
                 feature_dim: int = 64, image_emb_dim: int = 64, crop_size: Sequence[int] | int | None = None,
                 resnet_width: float = 1.0, num_kp: int = 32, share_image_encoder: bool = False,
                 dropout: float = 0.0):
        super().__init__(dropout)
        meta = parse_shape_meta(shape_meta)["obs"]
        self.n_obs_steps = int(n_obs_steps)
        self.image_keys = [k for k, v in meta.items() if v["type"] == "rgb"]
        crop = None
        if crop_size is not None and self.image_keys:
            crop = [int(crop_size)] * 2 if isinstance(crop_size, int) else [int(c) for c in crop_size]
            for k in self.image_keys:
                _, h, w = meta[k]["shape"]
                if crop[0] > h or crop[1] > w:
                    raise ValueError(f"obs_encoder.crop_size={crop} is larger than image {k!r} ({h}x{w})")
        self.frames = MultiImageObsCondition({k: {"shape": v["shape"], "type": v["type"]} for k, v in meta.items()},
                                             emb_dim=image_emb_dim, flatten=True, crop_size=crop,
                                             num_kp=num_kp, width=resnet_width,
                                             share_image_encoder=share_image_encoder, dropout=0.0)
        raw = self.n_obs_steps * self.frames.feature_dim
        if mlp is None:
            self.mlp = None
            self.out_dim = raw
        else:
            self.mlp = build_mlp(raw, int(feature_dim), [int(h) for h in mlp], Mish())
            self.out_dim = int(feature_dim)

    def encode(self, condition: Mapping[str, torch.Tensor]) -> torch.Tensor:
        for k, v in condition.items():
            if k in self.frames.meta and (v.dim() < 2 or v.shape[1] != self.n_obs_steps):
                raise ValueError(f"observation {k!r} has shape {tuple(v.shape)}; expected (B, To={self.n_obs_steps}, ...)")
        feat = self.frames(condition)
        return feat if self.mlp is None else self.mlp(feat)
