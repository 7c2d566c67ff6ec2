"""Imitation run configs: YAML files (built-in ones under cleandiffuser/configs/imitation/) plus
`key=value` overrides, checked here (the offline-RL checker does not apply).

    cfg = load_imitation_config("imitation/edm_lift", ["task.dataset_path=lift.hdf5", "training.steps=2000"])
"""
from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from ..runner.config import NON_NEGATIVE, POSITIVE, ConfigError, _load_file, apply_overrides, config_path
from ..runner.rules import Integer, ListOf, Number, first_violation
from .encoder import parse_shape_meta
from .policy import (
    BACKBONES,
    DEFAULT_OPTIMIZER,
    DEFAULT_POLICY,
    KINDS,
    _chaining_indices,
    _unet_levels,
    merge_section,
)

__all__ = ["ENVS", "REQUIRED_KEYS", "check_imitation_config", "load_imitation_config"]

#: rollout environments (task.env): robosuite (robomimic env_args) or Push-T (gym-pusht, state observations)
ENVS = ("robosuite", "pusht")

REQUIRED_KEYS = ("seed", "device", "precision", "task", "shape_meta", "horizon", "n_obs_steps", "n_action_steps",
                 "dataset", "policy", "optimizer", "training", "logging")
TRAINING_INTS = {"steps": 1, "batch_size": 1, "val_every": 0, "val_windows": 0, "rollout_every": 0,
                 "rollout_episodes": 0, "eval_episodes": 0, "latency_repeats": 0, "rollout_seed": 0}
LOGGING_INTS = {"log_every": 0, "checkpoint_every": 0, "keep_every": 0}
#: type and range of the numeric settings (policy and optimizer keys after their code defaults are merged in)
NUMERIC_RULES = {
    "seed": Integer(0, 2 ** 32 - 1),
    "task.rollout_horizon": Integer(1, nullable=True, note="null: the task's default"),
    "task.split_seed": Integer(0, 2 ** 32 - 1),
    "task.max_episodes": Integer(1, nullable=True, note="null: all"),
    "policy.diffusion_step_embed_dim": Integer(1),
    "policy.down_dims": ListOf(Integer(1)),
    "policy.kernel_size": Integer(1),
    "policy.n_groups": Integer(1),
    "policy.dropout": Number(0, 1, high_open=True),
    "policy.ema_rate": Number(0, 1),
    "policy.obs_encoder.mlp": ListOf(Integer(1), min_len=0, nullable=True),
    "policy.obs_encoder.feature_dim": Integer(1),
    "policy.obs_encoder.image_emb_dim": Integer(1),
    "policy.obs_encoder.crop_size": ListOf(Integer(1), min_len=2, max_len=2),
    "policy.obs_encoder.resnet_width": POSITIVE,
    "policy.obs_encoder.num_kp": Integer(1),
    "policy.noise_scheduler.sigma_data": POSITIVE,
    "policy.noise_scheduler.sigma_min": POSITIVE,
    "policy.noise_scheduler.sigma_max": POSITIVE,
    "policy.noise_scheduler.rho": POSITIVE,
    "policy.noise_scheduler.P_mean": Number(),
    "policy.noise_scheduler.P_std": POSITIVE,
    "policy.losses.dsm": NON_NEGATIVE,
    "policy.losses.ctm": NON_NEGATIVE,
    "policy.ode_steps_max": Integer(1),
    "optimizer.lr": POSITIVE,
    "optimizer.betas": ListOf(Number(0, 1, high_open=True), min_len=2, max_len=2),
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.lr_warmup_steps": Integer(0),
    "optimizer.grad_clip_norm": Number(0, low_open=True, nullable=True, note="null: no clipping"),
}


def load_imitation_config(name: str | os.PathLike, overrides=()) -> DictConfig:
    """A config by built-in name ("imitation/edm_lift") or path, with `base:` inheritance and
    `overrides` applied, then checked."""
    path = config_path(name)
    cfg = _load_file(name)
    apply_overrides(cfg, list(overrides), source=str(path))
    check_imitation_config(cfg, str(path))
    return cfg


def _int(value, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def check_imitation_config(cfg: DictConfig, source: str = "config") -> None:
    """Raise ConfigError naming the key for anything a run would trip over later."""
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"{source} lacks the keys {missing} (an imitation config needs {list(REQUIRED_KEYS)}; "
                          "start from cleandiffuser/configs/imitation/edm_lift.yaml)")
    if OmegaConf.is_missing(cfg.task, "dataset_path") or not cfg.task.get("dataset_path"):
        raise ConfigError(f"{source}: task.dataset_path is required: a robomimic .hdf5 file (e.g. written by "
                          "cleandiffuser.datagen.robosuite_demos) or a Diffusion Policy .zarr replay buffer; "
                          "set task.dataset_path=PATH")
    try:
        meta = parse_shape_meta(cfg.shape_meta)
        policy = merge_section(DEFAULT_POLICY, cfg.policy, "policy")
        optim = merge_section(DEFAULT_OPTIMIZER, cfg.optimizer, "optimizer")
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    problem = first_violation({"seed": cfg.seed, "task": cfg.task, "policy": policy, "optimizer": optim},
                              NUMERIC_RULES)
    if problem:
        raise ConfigError(problem)
    sigmas = policy["noise_scheduler"]
    if sigmas["sigma_min"] >= sigmas["sigma_max"]:
        raise ConfigError(f"policy.noise_scheduler.sigma_min={sigmas['sigma_min']} must be below "
                          f"policy.noise_scheduler.sigma_max={sigmas['sigma_max']}")
    horizon = _int(cfg.horizon, "horizon", 1)
    to = _int(cfg.n_obs_steps, "n_obs_steps", 1)
    ta = _int(cfg.n_action_steps, "n_action_steps", 1)
    if to > horizon or to - 1 + ta > horizon:
        raise ConfigError(f"need n_obs_steps - 1 + n_action_steps <= horizon; got n_obs_steps={to}, "
                          f"n_action_steps={ta}, horizon={horizon}")
    if policy["kind"] not in KINDS:
        raise ConfigError(f"policy.kind={policy['kind']!r} is not one of {KINDS} (edm = teacher, ctm = Consistency "
                          "Policy student, ddpm/ddim = Diffusion Policy baseline)")
    if policy["backbone"] not in BACKBONES:
        raise ConfigError(f"policy.backbone={policy['backbone']!r} is not one of {BACKBONES} (unet = ChiUNet1d, "
                          "transformer = ChiTransformer)")
    if policy["backbone"] == "unet":
        try:
            _, mult = _unet_levels(policy["down_dims"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if horizon % (2 ** (len(mult) - 1)):
            raise ConfigError(f"horizon={horizon} must be divisible by 2^(len(policy.down_dims) - 1) = "
                              f"{2 ** (len(mult) - 1)}")
        if any(int(d) % int(policy["n_groups"]) for d in policy["down_dims"]):
            raise ConfigError(f"policy.down_dims={policy['down_dims']} must be divisible by policy.n_groups="
                              f"{policy['n_groups']}")
    else:
        t = policy["transformer"]
        for k in ("n_layer", "n_head", "n_emb"):
            _int(t[k], f"policy.transformer.{k}", 1)
        if t["n_emb"] % t["n_head"] or t["n_emb"] % 2:
            raise ConfigError(f"policy.transformer.n_emb={t['n_emb']} must be even and divisible by "
                              f"policy.transformer.n_head={t['n_head']}")
        for k in ("p_drop_emb", "p_drop_attn"):
            if isinstance(t[k], bool) or not isinstance(t[k], (int, float)) or not 0.0 <= t[k] < 1.0:
                raise ConfigError(f"policy.transformer.{k} must be in [0, 1), got {t[k]!r}")
    bins = policy["noise_scheduler"]["bins"]
    _int(bins, "policy.noise_scheduler.bins", 2)
    if policy["kind"] in ("ddpm", "ddim"):
        steps = _int(policy["num_train_timesteps"], "policy.num_train_timesteps", 1)
        k = _int(policy["num_inference_steps"], "policy.num_inference_steps", 1)
        if k > steps:
            raise ConfigError(f"policy.num_inference_steps={k} exceeds policy.num_train_timesteps={steps}")
    if policy["kind"] == "ctm":
        try:
            _chaining_indices(policy["chaining_times"], bins)
        except ValueError as e:
            raise ConfigError(f"policy.{e}") from None
        inference = bool(cfg.training.get("inference_mode", False))
        if not inference and (not policy["teacher_path"] or policy["teacher_path"] == "???"):
            raise ConfigError(f"{source}: policy.kind=ctm needs policy.teacher_path=<checkpoint or run directory of "
                              "a trained EDM teacher>; set policy.edm to the same path to warm-start from it")
    if optim["lr_scheduler"] not in ("cosine", "constant"):
        raise ConfigError(f"optimizer.lr_scheduler={optim['lr_scheduler']!r} is not one of ('cosine', 'constant')")
    for key, minimum in TRAINING_INTS.items():
        if key not in cfg.training:
            raise ConfigError(f"{source}: training.{key} is missing")
        _int(cfg.training[key], f"training.{key}", minimum)
    if cfg.training.get("eval_n_envs") is not None:  # optional: runs saved before it existed lack it
        _int(cfg.training.eval_n_envs, "training.eval_n_envs", 1)
    for key, minimum in LOGGING_INTS.items():
        if key not in cfg.logging:
            raise ConfigError(f"{source}: logging.{key} is missing")
        _int(cfg.logging[key], f"logging.{key}", minimum)
    if cfg.dataset.get("normalizer", "limits") not in ("limits", "gaussian"):
        raise ConfigError(f"dataset.normalizer={cfg.dataset.normalizer!r} is not one of ('limits', 'gaussian')")
    env = cfg.task.get("env")
    if env is not None and env not in ENVS:
        raise ConfigError(f"task.env={env!r} is not one of {ENVS} (or null: robosuite when the dataset records "
                          "env_args)")
    from .actions import ActionTransform  # lazily: see ChunkPolicy.__init__

    abs_action = cfg.task.get("abs_action", False)
    if not isinstance(abs_action, bool):
        raise ConfigError(f"task.abs_action must be true or false, got {abs_action!r} (true: the actions are absolute "
                          "OSC_POSE targets and the rollout env uses the absolute controller)")
    try:  # a known task.rotation_rep that fits the action width
        ActionTransform(cfg.task.get("rotation_rep", "axis_angle"), meta["action"]["shape"][0])
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    ratio = cfg.task.get("val_ratio", 0.0)
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"task.val_ratio must be in [0, 1), got {ratio!r}")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision={cfg.precision!r} is not one of ('auto', 'bf16', 'fp32')")
    if not (cfg.device == "auto" or str(cfg.device).startswith(("cpu", "cuda"))):
        raise ConfigError(f"device={cfg.device!r}: use auto, cpu, cuda or cuda:N")
    if not meta["obs"]:
        raise ConfigError("shape_meta.obs is empty")
