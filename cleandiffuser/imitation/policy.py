"""Chunked-action policies (Diffusion Policy / Consistency Policy).

A :class:`ChunkPolicy` is an observation encoder (:class:`~.encoder.ObsEncoder`) plus a generative
model over action chunks (Tp, A) conditioned on the encoding. Its denoiser (``policy.backbone``) is
Diffusion Policy's ChiUNet1d (``unet``, FiLM 1-D U-Net, the default) or its time-series transformer
ChiTransformer (``transformer``: the Tp noisy actions are tokens of a causal transformer decoder whose
memory is [diffusion-time token, observation tokens], one token per observation frame; sizes in
``policy.transformer``). It sees the last To observations and predicts Tp = horizon actions, of which
``action_pred[:, To-1 : To-1+Ta]`` are executed (Diffusion Policy's convention).

Kinds (``policy.kind``):

* ``edm`` - the Consistency Policy teacher: :class:`ContinuousEDM` with sigma_min 0.02,
  ln sigma ~ N(-1.2, 1.2^2) in training; inference = Heun over ``noise_scheduler.bins`` Karras
  levels (2 bins - 1 network evaluations). ``bins`` can change after training.
* ``ctm`` - the Consistency Policy student: :class:`ConsistencyTrajectoryModel` distilled from an
  EDM teacher checkpoint (``policy.teacher_path``) with the losses ``{dsm: beta, ctm: alpha}``,
  warm-started from ``policy.edm`` (normally the teacher: then the student equals the teacher at
  step 0) with the observation encoder frozen. Inference: one network evaluation; after
  :meth:`ChunkPolicy.enable_chaining`, multistep chaining at ``policy.chaining_times``, which are
  *indices of the bins grid* (0 = sigma_max), default ``[0, round(N/3), round(2N/3)]`` - the paper's
  intent, not the public code's literal sigmas 27 and 54.
* ``ddpm`` / ``ddim`` - the Diffusion Policy baseline: :class:`DiscreteDiffusionSDE` with
  ``num_train_timesteps`` (100) steps, cosine schedule, eps-prediction; ``ddpm`` samples with all
  of them, ``ddim`` with ``num_inference_steps`` (15). Both kinds train identically.

All actions are generated in the normalized space ([-1, 1] per dim with the "limits"
normalizer) and clipped there; :meth:`ChunkPolicy.predict_action` normalizes raw observations
and unnormalizes the actions with the attached :class:`LinearNormalizer`. With
``rotation_rep="rotation_6d"`` (``task.rotation_rep``) the model works on ``[pos, rot6d, gripper]``
(10 dims per arm) and ``predict_action`` converts them back to the environment's
``[pos, axis-angle, gripper]`` (``shape_meta.action.shape``); see :mod:`.actions`.
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..dataset.chunking import LinearNormalizer
from ..diffusion.consistency_model import copy_teacher_weights
from ..diffusion.ctm import ConsistencyTrajectoryModel
from ..diffusion.diffusionsde import DiscreteDiffusionSDE
from ..diffusion.edm import ContinuousEDM
from ..nn_diffusion.chitransformer import ChiTransformer
from ..nn_diffusion.chiunet import ChiUNet1d
from .encoder import ObsEncoder, _plain, parse_shape_meta

__all__ = [
    "ARCHITECTURE_KEYS",
    "BACKBONES",
    "DEFAULT_OPTIMIZER",
    "DEFAULT_POLICY",
    "KINDS",
    "ChunkPolicy",
    "architecture_settings",
    "default_chaining_times",
    "fork_rng",
    "lr_at",
    "measure_latency_ms",
    "merge_section",
]

KINDS = ("edm", "ctm", "ddpm", "ddim")
BACKBONES = ("unet", "transformer")

#: The `policy` config section; the code defaults are the paper's sizes (configs scale them down).
DEFAULT_POLICY: dict = {
    "kind": "edm",
    "backbone": "unet",         # unet (ChiUNet1d) | transformer (ChiTransformer)
    # --- unet backbone ---
    "diffusion_step_embed_dim": 128,
    "down_dims": [512, 1024, 2048],
    "kernel_size": 5,
    "n_groups": 8,
    "cond_predict_scale": True,
    "dropout": 0.0,             # dropout in the U-Net's residual blocks (the CP student uses 0.2)
    "timestep_emb_type": "positional",
    # --- transformer backbone (Diffusion Policy's transformer sizes) ---
    "transformer": {
        "n_layer": 8,           # decoder layers
        "n_head": 4,            # attention heads (n_emb must be divisible by it)
        "n_emb": 256,           # token width (also the diffusion-time embedding's width)
        "p_drop_emb": 0.0,      # dropout on the token embeddings
        "p_drop_attn": 0.3,     # dropout in the decoder layers (DP: 0.3 image, 0.01 low-dim)
    },
    "obs_encoder": {
        "mlp": None,            # hidden widths of an MLP over the To stacked frames; None = identity
        "feature_dim": 64,      # the MLP's output width
        "image_emb_dim": 64,    # per rgb key and frame
        "crop_size": [76, 76],  # random crop in training, centre crop at eval (rgb keys only)
        "resnet_width": 1.0,
        "num_kp": 32,
        "share_image_encoder": False,
    },
    "noise_scheduler": {        # edm / ctm
        "sigma_data": 0.5,
        "sigma_min": 0.02,
        "sigma_max": 80.0,
        "rho": 7.0,
        "P_mean": -1.2,
        "P_std": 1.2,
        "bins": 80,
    },
    "ema_rate": 0.999,
    # ctm (student)
    "teacher_path": None,
    "edm": None,                # warm start: a checkpoint of an EDM policy (normally = teacher_path)
    "losses": {"dsm": 1.0, "ctm": 1.0},
    "chaining_times": None,     # bin indices, first 0 (or 'D'); None = [0, N/3, 2N/3]
    "ode_steps_max": 1,
    "freeze_encoder": True,
    # ddpm / ddim (baseline)
    "num_train_timesteps": 100,
    "num_inference_steps": 15,
}

DEFAULT_OPTIMIZER: dict = {
    "lr": 1.0e-4,
    "betas": [0.95, 0.999],
    "weight_decay": 1.0e-6,
    "lr_scheduler": "cosine",   # cosine | constant (after the linear warm-up)
    "lr_warmup_steps": 500,
    "grad_clip_norm": None,
}

#: settings a student must share with its teacher (and a warm-start checkpoint): the common ones, and
#: those of the backbone in use (UNET_KEYS or transformer.TRANSFORMER_KEYS); dropout may differ
COMMON_ARCHITECTURE_KEYS = ("backbone", "timestep_emb_type", "obs_encoder")
UNET_KEYS = ("diffusion_step_embed_dim", "down_dims", "kernel_size", "n_groups", "cond_predict_scale")
TRANSFORMER_KEYS = ("n_layer", "n_head", "n_emb")
ARCHITECTURE_KEYS = UNET_KEYS + ("timestep_emb_type", "obs_encoder")  # the unet backbone's (kept for imports)


def architecture_settings(policy_cfg: Mapping) -> dict:
    """{"policy key": value} of the architecture settings a student must share with its teacher."""
    p = merge_section(DEFAULT_POLICY, policy_cfg, "policy")
    out = {k: p[k] for k in COMMON_ARCHITECTURE_KEYS}
    if p["backbone"] == "transformer":
        out.update({f"transformer.{k}": p["transformer"][k] for k in TRANSFORMER_KEYS})
    else:
        out.update({k: p[k] for k in UNET_KEYS})
    return out


def merge_section(defaults: Mapping, given, where: str) -> dict:
    """defaults updated by `given` (recursively for nested sections); unknown keys raise ValueError."""
    given = _plain(given) or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"{where} must be a mapping, got {given!r:.80}")
    out = copy.deepcopy(dict(defaults))
    for k, v in given.items():
        if k not in defaults:
            raise ValueError(f"unknown key {where}.{k}; valid keys: {', '.join(sorted(defaults))}")
        if isinstance(defaults[k], Mapping):
            out[k] = merge_section(defaults[k], v, f"{where}.{k}")
        else:
            out[k] = copy.deepcopy(v)
    return out


def lr_at(step: int, base_lr: float, warmup: int, total: int | None, schedule: str = "cosine") -> float:
    """Learning rate before gradient step `step` (0-based): linear warm-up over `warmup` steps, then
    cosine decay to 0 at `total` (or constant when schedule == 'constant' or total is None)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant" or not total:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_chaining_times(bins: int, steps: int = 3) -> list[int]:
    """Evenly spaced bin indices [0, N/k, 2N/k, ...] (Consistency Policy's heuristic)."""
    return [int(round(j * bins / steps)) for j in range(steps)]


def _chaining_indices(times, bins: int) -> list[int]:
    if times is None:
        return default_chaining_times(bins)
    times = _plain(times)
    if isinstance(times, (str, int)):
        times = [times]
    idx = []
    for t in times:
        if t == "D":
            idx.append(0)
        else:
            try:
                idx.append(int(t))
            except (TypeError, ValueError):
                raise ValueError(f"chaining_times entries must be bin indices or 'D', got {t!r}") from None
    if not idx or idx[0] != 0 or idx != sorted(set(idx)) or idx[-1] >= bins:
        raise ValueError(f"chaining_times={times!r} must be increasing bin indices starting at 0 (or 'D') and "
                         f"below bins={bins} (they are indices of the Karras grid, 0 = sigma_max; e.g. "
                         f"{default_chaining_times(bins)})")
    return idx


def _unet_levels(down_dims) -> tuple[int, list[int]]:
    down = [int(d) for d in down_dims]
    if not down or any(d < 1 for d in down):
        raise ValueError(f"policy.down_dims must be positive widths, got {down_dims}")
    mult = [1]
    for a, b in zip(down[:-1], down[1:]):
        if b % a:
            raise ValueError(f"policy.down_dims={down}: each width must be a multiple of the previous one")
        mult.append(b // a)
    return down[0], mult


def _move_diffusion_model(dm, device: torch.device) -> None:
    """Finish moving a DiffusionModel whose submodules were moved by nn.Module.to: its plain
    tensor attributes (masks, bounds, grids), the optimizer state and the device it reports."""
    for name, value in list(vars(dm).items()):
        if isinstance(value, torch.Tensor):
            setattr(dm, name, value.to(device))
    for state in dm.optimizer.state.values():
        for k, v in list(state.items()):
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)
    dm.device = torch.device(device)
    dm._memo_store.clear()
    dm.set_precision(dm.precision)


class ChunkPolicy(nn.Module):
    """Observation history -> action chunk policy; see the module docstring.

    Args:
        shape_meta: observation keys with shapes and types, and the action shape (see encoder.py).
        horizon, n_obs_steps, n_action_steps: Tp, To, Ta (DP's 16, 2, 8).
        policy: the `policy` config section (missing keys take DEFAULT_POLICY's values).
        optimizer: the `optimizer` config section (DEFAULT_OPTIMIZER).
        precision: "fp32", "bf16" or "auto" (bf16 autocast where the hardware is fast at it).
        inference_mode: build for inference only: a ctm student loads no teacher and :meth:`update`
            is refused.
        teacher, edm: (ctm, training) ChunkPolicy objects to use instead of loading
            ``policy.teacher_path`` / ``policy.edm``.
        rotation_rep: ``task.rotation_rep``: "axis_angle" (the model learns the actions as they are) or
            "rotation_6d" (it learns [pos, rot6d, gripper]; :class:`~.actions.ActionTransform`).

    Attributes: ``model`` (the DiffusionModel; ``model.model["condition"]`` is the encoder),
    ``normalizer`` (LinearNormalizer or None, over the model's actions), ``teacher`` (ctm in training),
    ``obs_keys``, ``action_dim`` (the model's action width) and ``env_action_dim`` (shape_meta's, what
    :meth:`predict_action` returns).
    """

    def __init__(self, shape_meta, horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8,
                 policy: Mapping | None = None, optimizer: Mapping | None = None, device="cpu",
                 precision: str = "fp32", inference_mode: bool = False, teacher: ChunkPolicy | None = None,
                 edm: ChunkPolicy | None = None, rotation_rep: str = "axis_angle"):
        super().__init__()
        self.shape_meta = parse_shape_meta(shape_meta)
        self.horizon, self.n_obs_steps, self.n_action_steps = int(horizon), int(n_obs_steps), int(n_action_steps)
        if not 1 <= self.n_obs_steps <= self.horizon:
            raise ValueError(f"n_obs_steps must be in [1, horizon={self.horizon}], got {self.n_obs_steps}")
        if self.n_action_steps < 1 or self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(f"need 1 <= n_action_steps and n_obs_steps - 1 + n_action_steps <= horizon; got "
                             f"To={self.n_obs_steps}, Ta={self.n_action_steps}, Tp={self.horizon}")
        self.policy_cfg = merge_section(DEFAULT_POLICY, policy, "policy")
        self.optim_cfg = merge_section(DEFAULT_OPTIMIZER, optimizer, "optimizer")
        self.kind = self.policy_cfg["kind"]
        if self.kind not in KINDS:
            raise ValueError(f"policy.kind={self.kind!r} is not one of {KINDS}")
        if self.optim_cfg["lr_scheduler"] not in ("cosine", "constant"):
            raise ValueError(f"optimizer.lr_scheduler={self.optim_cfg['lr_scheduler']!r} is not one of "
                             "('cosine', 'constant')")
        self.precision = precision
        self.device = torch.device(device)
        self.inference_mode = bool(inference_mode)
        self.obs_keys = list(self.shape_meta["obs"])
        self.rgb_keys = [k for k in self.obs_keys if self.shape_meta["obs"][k]["type"] == "rgb"]
        # imported here (also in config.py, train.py): the package must not load .actions, so that
        # `python -m cleandiffuser.imitation.actions` runs without runpy's double-import warning
        from .actions import ActionTransform

        self.env_action_dim = int(self.shape_meta["action"]["shape"][0])
        self.rotation_rep = rotation_rep
        self.action_transform = ActionTransform(rotation_rep, self.env_action_dim)
        self.action_dim = self.action_transform.model_dim  # what the network generates
        self.model = self._build_model()
        self.normalizer: LinearNormalizer | None = None
        self.chaining = False
        self.chaining_times: list[int] | None = None
        if self.kind == "ctm":
            self.chaining_times = _chaining_indices(self.policy_cfg["chaining_times"],
                                                    self.policy_cfg["noise_scheduler"]["bins"])
        object.__setattr__(self, "teacher", None)  # not a submodule: never saved or trained
        self.warm_started = False
        if self.kind == "ctm" and not self.inference_mode:
            self._prepare_student(teacher, edm)
        if self.inference_mode:
            self.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg, device="cpu", inference_mode: bool | None = None, **kwargs) -> ChunkPolicy:
        """Build from a run config (its shape_meta, horizon, n_obs_steps, n_action_steps, policy,
        optimizer, precision, task.rotation_rep and training.inference_mode sections)."""
        cfg = _plain(cfg)
        if inference_mode is None:
            inference_mode = bool((cfg.get("training") or {}).get("inference_mode", False))
        # a checkpoint's config has the top-level "rotation_rep" of spec(): what the weights were trained with
        rotation_rep = cfg.get("rotation_rep") or (cfg.get("task") or {}).get("rotation_rep") or "axis_angle"
        return cls(cfg["shape_meta"], cfg.get("horizon", 16), cfg.get("n_obs_steps", 2), cfg.get("n_action_steps", 8),
                   policy=cfg.get("policy"), optimizer=cfg.get("optimizer"), device=device,
                   precision=cfg.get("precision", "fp32"), inference_mode=inference_mode, rotation_rep=rotation_rep,
                   **kwargs)

    def spec(self) -> dict:
        """JSON-able constructor settings (what a checkpoint records to rebuild the policy)."""
        return {"shape_meta": copy.deepcopy(self.shape_meta), "horizon": self.horizon, "n_obs_steps": self.n_obs_steps,
                "n_action_steps": self.n_action_steps, "policy": copy.deepcopy(self.policy_cfg),
                "optimizer": copy.deepcopy(self.optim_cfg), "precision": self.precision,
                "rotation_rep": self.rotation_rep}

    def _build_model(self):
        p, o = self.policy_cfg, self.optim_cfg
        e = p["obs_encoder"]
        encoder = ObsEncoder(self.shape_meta, self.n_obs_steps, mlp=e["mlp"], feature_dim=e["feature_dim"],
                             image_emb_dim=e["image_emb_dim"], crop_size=e["crop_size"],
                             resnet_width=e["resnet_width"], num_kp=e["num_kp"],
                             share_image_encoder=e["share_image_encoder"], dropout=0.0)
        net = self._build_backbone(encoder)
        common = dict(grad_clip_norm=o["grad_clip_norm"], ema_rate=float(p["ema_rate"]),
                      optim_params={"lr": float(o["lr"]), "betas": tuple(float(b) for b in o["betas"]),
                                    "weight_decay": float(o["weight_decay"])},
                      x_max=torch.tensor(1.0), x_min=torch.tensor(-1.0), device=self.device, precision=self.precision)
        ns = p["noise_scheduler"]
        sig = dict(sigma_data=float(ns["sigma_data"]), sigma_min=float(ns["sigma_min"]),
                   sigma_max=float(ns["sigma_max"]), rho=float(ns["rho"]), P_mean=float(ns["P_mean"]),
                   P_std=float(ns["P_std"]))
        if self.kind == "edm":
            model = ContinuousEDM(net, encoder, **sig, **common)
        elif self.kind == "ctm":
            bins = ns["bins"]
            if not isinstance(bins, int) or bins < 2:
                raise ValueError(f"policy.noise_scheduler.bins must be an int >= 2, got {bins!r}")
            model = ConsistencyTrajectoryModel(net, encoder, **sig, bins=bins, ctm_weight=float(p["losses"]["ctm"]),
                                               dsm_weight=float(p["losses"]["dsm"]),
                                               ode_steps_max=int(p["ode_steps_max"]), **common)
        else:
            model = DiscreteDiffusionSDE(net, encoder, diffusion_steps=int(p["num_train_timesteps"]),
                                         noise_schedule="cosine", predict_noise=True, **common)
        model.x_shape = (self.horizon, self.action_dim)
        return model

    def _build_backbone(self, encoder: ObsEncoder) -> nn.Module:
        p = self.policy_cfg
        backbone = p["backbone"]
        if backbone not in BACKBONES:
            raise ValueError(f"policy.backbone={backbone!r} is not one of {BACKBONES}")
        if backbone == "transformer":
            t = p["transformer"]
            sizes = {}
            for k in TRANSFORMER_KEYS:
                v = t[k]
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"policy.transformer.{k} must be an integer >= 1, got {v!r}")
                sizes[k] = v
            if sizes["n_emb"] % sizes["n_head"] or sizes["n_emb"] % 2:
                raise ValueError(f"policy.transformer.n_emb={sizes['n_emb']} must be even and divisible by "
                                 f"policy.transformer.n_head={sizes['n_head']}")
            for k in ("p_drop_emb", "p_drop_attn"):
                if not 0.0 <= float(t[k]) < 1.0:
                    raise ValueError(f"policy.transformer.{k} must be in [0, 1), got {t[k]!r}")
            # one memory token per observation frame (the encoder concatenates the frames step-major);
            # with an obs_encoder MLP (which mixes the frames) the whole encoding is one token
            n_tokens = self.n_obs_steps if encoder.mlp is None else 1
            return ChiTransformer(self.action_dim, obs_dim=encoder.out_dim // n_tokens, Ta=self.horizon, To=n_tokens,
                                  d_model=sizes["n_emb"], nhead=sizes["n_head"], num_layers=sizes["n_layer"],
                                  p_drop_emb=float(t["p_drop_emb"]), p_drop_attn=float(t["p_drop_attn"]),
                                  timestep_emb_type=p["timestep_emb_type"])
        model_dim, mult = _unet_levels(p["down_dims"])
        n_groups = int(p["n_groups"])
        bad = [d for d in p["down_dims"] if int(d) % n_groups]
        if bad:
            raise ValueError(f"policy.down_dims {bad} are not divisible by policy.n_groups={n_groups} (GroupNorm)")
        factor = 2 ** (len(mult) - 1)
        if self.horizon % factor:
            raise ValueError(f"horizon={self.horizon} must be divisible by 2^(len(policy.down_dims) - 1) = {factor}")
        if int(p["diffusion_step_embed_dim"]) % 2:
            raise ValueError(f"policy.diffusion_step_embed_dim must be even, got {p['diffusion_step_embed_dim']}")
        return ChiUNet1d(self.action_dim, obs_dim=encoder.out_dim, To=1, model_dim=model_dim,
                         emb_dim=int(p["diffusion_step_embed_dim"]), kernel_size=int(p["kernel_size"]),
                         cond_predict_scale=bool(p["cond_predict_scale"]), dim_mult=mult, n_groups=n_groups,
                         dropout=float(p["dropout"]), timestep_emb_type=p["timestep_emb_type"])

    def _architecture_diff(self, other: ChunkPolicy) -> list[str]:
        diffs = []
        for name in ("horizon", "n_obs_steps"):
            if getattr(self, name) != getattr(other, name):
                diffs.append(f"{name} (this {getattr(self, name)}, other {getattr(other, name)})")
        if self.shape_meta != other.shape_meta:
            diffs.append(f"shape_meta (this {self.shape_meta}, other {other.shape_meta})")
        if self.rotation_rep != other.rotation_rep:
            diffs.append(f"task.rotation_rep (this {self.rotation_rep!r}, other {other.rotation_rep!r})")
        mine, theirs = architecture_settings(self.policy_cfg), architecture_settings(other.policy_cfg)
        if mine["backbone"] != theirs["backbone"]:
            diffs.append(f"policy.backbone (this {mine['backbone']!r}, other {theirs['backbone']!r})")
        else:
            for k in mine:
                if mine[k] != theirs[k]:
                    diffs.append(f"policy.{k} (this {mine[k]!r}, other {theirs[k]!r})")
        for k in ("sigma_data", "sigma_min", "sigma_max"):
            a, b = self.policy_cfg["noise_scheduler"][k], other.policy_cfg["noise_scheduler"][k]
            if float(a) != float(b):
                diffs.append(f"policy.noise_scheduler.{k} (this {a}, other {b})")
        return diffs

    def _prepare_student(self, teacher: ChunkPolicy | None, edm: ChunkPolicy | None) -> None:
        from .checkpoint import load_policy

        p = self.policy_cfg
        if teacher is None:
            if not p["teacher_path"]:
                raise ValueError("policy.kind=ctm needs policy.teacher_path: the checkpoint of a trained EDM teacher "
                                 "(set training.inference_mode=true only to load an already trained student)")
            teacher = load_policy(p["teacher_path"], device=self.device, inference_mode=True)
        for role, other in (("teacher", teacher), ("warm-start (policy.edm)", edm)):
            if other is None:
                continue
            if other.kind != "edm":
                raise ValueError(f"the {role} must be an EDM policy (policy.kind=edm), got kind {other.kind!r}")
            diffs = self._architecture_diff(other)
            if diffs:
                raise ValueError(f"the student and its {role} must share the architecture; they differ in: "
                                 + "; ".join(diffs))
        if edm is None and p["edm"]:
            same = teacher is not None and p["teacher_path"] and os.path.realpath(str(p["edm"])) == \
                os.path.realpath(str(p["teacher_path"]))
            edm = teacher if same else load_policy(p["edm"], device=self.device, inference_mode=True)
            if edm is not teacher:
                diffs = self._architecture_diff(edm)
                if edm.kind != "edm" or diffs:
                    raise ValueError(f"policy.edm={p['edm']} is not a compatible EDM policy: kind {edm.kind!r}; "
                                     + "; ".join(diffs))
        teacher.eval()
        self.model.prepare_distillation(teacher.model, warm_start=edm is teacher, teacher_solver="heun")
        if edm is not None and edm is not teacher:
            copy_teacher_weights(self.model, edm.model, strict=False)
        if edm is not None and p["freeze_encoder"]:
            self.model.model["condition"].requires_grad_(False)
        if teacher.normalizer is not None:
            self.normalizer = teacher.normalizer
        object.__setattr__(self, "teacher", teacher)
        self.warm_started = edm is not None

    # ------------------------------------------------------------------ normalizer and devices
    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        if not isinstance(normalizer, LinearNormalizer):
            raise TypeError(f"normalizer must be a LinearNormalizer, got {type(normalizer).__name__}")
        missing = [k for k in self.obs_keys + ["action"] if k not in normalizer]
        if missing:
            raise KeyError(f"normalizer has no entry for {missing}; it has {sorted(normalizer.keys())}")
        try:  # fitted on the model's actions (10-d per arm with rotation_6d), not the env's
            normalizer["action"].normalize(np.zeros((1, self.action_dim), dtype=np.float32))
        except ValueError:
            raise ValueError(f"the normalizer's 'action' entry does not fit the model's {self.action_dim}-d actions "
                             f"(rotation_rep={self.rotation_rep!r})") from None
        self.normalizer = normalizer

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None:
            raise TypeError("ChunkPolicy keeps fp32 weights; use precision='bf16' for bf16 autocast")
        if device is None:
            return self
        super().to(device)
        _move_diffusion_model(self.model, device)
        if self.teacher is not None:
            self.teacher.to(device)
        self.device = torch.device(device)
        return self

    def cuda(self, device=None):
        return self.to(torch.device("cuda", device) if isinstance(device, int) else (device or "cuda"))

    def cpu(self):
        return self.to("cpu")

    def set_inference_mode(self, enabled: bool = True) -> ChunkPolicy:
        """Inference mode: eval mode (centre crops, no dropout) and updates refused."""
        self.inference_mode = bool(enabled)
        return self.eval() if enabled else self.train()

    # ------------------------------------------------------------------ chaining
    def enable_chaining(self, chaining_times=None) -> ChunkPolicy:
        """(ctm) Multistep inference: jump to the data, re-noise to the next chaining level, jump
        again. `chaining_times`: bin indices (default policy.chaining_times, i.e. [0, N/3, 2N/3])."""
        if self.kind != "ctm":
            raise ValueError(f"chaining is for consistency (ctm) students; this policy is kind {self.kind!r}")
        if chaining_times is not None:
            self.chaining_times = _chaining_indices(chaining_times, self.model.bins)
        self.chaining = True
        return self

    def disable_chaining(self) -> ChunkPolicy:
        self.chaining = False
        return self

    def nfe(self) -> int:
        """Network evaluations per predicted chunk with the current inference settings."""
        p = self.policy_cfg
        if self.kind == "edm":
            return 2 * int(p["noise_scheduler"]["bins"]) - 1
        if self.kind == "ctm":
            return len(self.chaining_times) if self.chaining else 1
        if self.kind == "ddim":
            return int(p["num_inference_steps"])
        return int(p["num_train_timesteps"])

    def inference_setting(self) -> str:
        p = self.policy_cfg
        if self.kind == "edm":
            return f"heun bins={p['noise_scheduler']['bins']}"
        if self.kind == "ctm":
            return f"chain {self.chaining_times}" if self.chaining else "1-step"
        if self.kind == "ddim":
            return f"ddim {p['num_inference_steps']} steps"
        return f"ddpm {p['num_train_timesteps']} steps"

    # ------------------------------------------------------------------ inference
    def normalize_obs(self, obs: Mapping) -> dict[str, torch.Tensor]:
        """Raw observations {key: (B, To, *shape)} (numpy or torch; images uint8 or [0, 1] floats,
        (C, H, W) or (H, W, C)) -> normalized tensors on the policy's device."""
        if self.normalizer is None:
            raise RuntimeError("this policy has no normalizer: call set_normalizer(dataset.normalizer) "
                               "(get_policy and the trainer attach it)")
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise KeyError(f"observation dict lacks {missing}; the policy needs {self.obs_keys}")
        out = {}
        for k in self.obs_keys:
            x = obs[k]
            x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
            spec = self.shape_meta["obs"][k]
            shape = tuple(spec["shape"])
            if spec["type"] == "rgb":
                c, h, w = shape
                if x.dim() >= 3 and tuple(x.shape[-3:]) == (h, w, c) and tuple(x.shape[-3:]) != shape:
                    x = x.movedim(-1, -3)
            elif x.is_floating_point() or x.dtype != torch.uint8:
                x = x.to(torch.float32)
            if x.dim() != 2 + len(shape) or tuple(x.shape[2:]) != shape or x.shape[1] != self.n_obs_steps:
                raise ValueError(f"observation {k!r} has shape {tuple(x.shape)}; expected (B, To={self.n_obs_steps}, "
                                 f"*{list(shape)})")
            x = self.normalizer[k].normalize(x.to(self.device))
            out[k] = x.to(torch.float32)
        return out

    @torch.no_grad()
    def predict_normalized(self, nobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalized observations -> normalized action chunks (B, Tp, A)."""
        b = next(iter(nobs.values())).shape[0]
        prior = torch.zeros(b, self.horizon, self.action_dim, device=self.device)
        p, dm = self.policy_cfg, self.model
        if self.kind == "edm":
            x, _ = dm.sample(prior, solver="heun", sample_steps=int(p["noise_scheduler"]["bins"]), condition_cfg=nobs)
        elif self.kind == "ctm":
            if self.chaining:
                x, _ = dm.sample(prior, solver="chain", chaining_times=self.chaining_times, condition_cfg=nobs)
            else:
                x, _ = dm.sample(prior, solver="chain", sample_steps=1, condition_cfg=nobs)
        elif self.kind == "ddim":
            x, _ = dm.sample(prior, solver="ddim", sample_steps=int(p["num_inference_steps"]), condition_cfg=nobs)
        else:
            x, _ = dm.sample(prior, solver="ddpm", sample_steps=int(p["num_train_timesteps"]), condition_cfg=nobs)
        return x

    @torch.no_grad()
    def predict_action(self, obs_dict: Mapping) -> dict[str, torch.Tensor]:
        """Raw observations {key: (B, To, *shape)} -> {"action": (B, Ta, A), "action_pred": (B, Tp, A)},
        unnormalized environment actions (A = shape_meta's, rotation-6d converted back to axis-angle);
        "action" = action_pred[:, To-1 : To-1+Ta]."""
        naction = self.predict_normalized(self.normalize_obs(obs_dict))
        action_pred = self.action_transform.inverse(self.normalizer["action"].unnormalize(naction))
        start = self.n_obs_steps - 1
        return {"action": action_pred[:, start:start + self.n_action_steps], "action_pred": action_pred}

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping) -> tuple[torch.Tensor, dict]:
        """Training loss on a normalized batch {"obs": {key: (B, To, ...)}, "action": (B, Tp, A)}
        (no optimizer step)."""
        dm = self.model
        action = dm._check_x(batch["action"], "action")
        obs = dm._check_condition(batch["obs"], "obs", action.shape[0])
        with dm.autocast():
            cond = dm.encode_condition(dm.model, obs)
            return dm.loss(action, cond, obs)

    def update(self, batch: Mapping, lr: float | None = None) -> dict:
        """One gradient step (and EMA update) on a normalized batch; `lr` sets the learning rate first."""
        if self.inference_mode:
            raise RuntimeError("this policy is in inference mode (get_policy / training.inference_mode=true); "
                               "call set_inference_mode(False) to train it")
        if lr is not None:
            for group in self.model.optimizer.param_groups:
                group["lr"] = lr
        return self.model.update(batch["action"], condition=batch["obs"])

    @property
    def step(self) -> int:
        return self.model.step

    def example_obs(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Raw zero observations shaped as the policy expects (for latency measurements)."""
        out = {}
        for k in self.obs_keys:
            spec = self.shape_meta["obs"][k]
            if spec["type"] == "rgb":
                out[k] = np.zeros((batch, self.n_obs_steps, *spec["shape"]), dtype=np.uint8)
            else:
                out[k] = np.zeros((batch, self.n_obs_steps, *spec["shape"]), dtype=np.float32)
        return out

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, backbone={self.policy_cfg['backbone']}, horizon={self.horizon}, n_obs_steps={self.n_obs_steps}, "
                f"n_action_steps={self.n_action_steps}, obs_keys={self.obs_keys}, rotation_rep={self.rotation_rep}")


def fork_rng(device):
    """Run a block without disturbing the global RNG streams (CPU, and CUDA when used): evaluation
    inside a training run must not change the training's random numbers."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def measure_latency_ms(policy: ChunkPolicy, repeats: int = 20, obs: Mapping | None = None) -> float:
    """Median wall time (ms) of one batch-1 `predict_action` call (normalization included)."""
    obs = policy.example_obs(1) if obs is None else obs
    sync = (lambda: torch.cuda.synchronize()) if policy.device.type == "cuda" else (lambda: None)
    with fork_rng(policy.device):
        policy.predict_action(obs)
        sync()
        times = []
        for _ in range(max(1, int(repeats))):
            t = time.perf_counter()
            policy.predict_action(obs)
            sync()
            times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))
