"""DiffusionModel: what every generative model here shares.

Networks (`model = ModuleDict(diffusion=..., condition=...)`), an EMA copy (`model_ema`), the
optimizer, inpainting masks, loss weights, clipping, classifier-free and classifier guidance,
bf16 autocast, input validation and checkpoints. A family (VP diffusion, EDM, rectified flow,
consistency models) adds its loss and its sampler.
"""
import copy
import functools
import math
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn as nn

from ..nn_condition.base import BaseNNCondition
from ..serialization import (CheckpointError, RecordsInit, build_from_config, flatten_state, load_checkpoint,
                             save_checkpoint, unflatten_state)
from .sampling import solve, solver_nfe

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls are several times faster than fp32 there."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class _NullCondition(BaseNNCondition):
    """Used when no condition encoder is given: passes the condition through unchanged."""

    def encode(self, condition):
        return condition


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 (a network output is bf16 under autocast); no dispatch when it already is."""
    return x if x.dtype is torch.float32 else x.float()


def _batch_size(condition) -> int:
    if isinstance(condition, dict):
        return _batch_size(next(iter(condition.values())))
    return condition.shape[0]


def _check_finite(value, name: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{name}[{k!r}]")
    elif isinstance(value, torch.Tensor) and value.is_floating_point():
        # a finite sum means every entry is finite (one reduction); only an overflowing sum needs the full check
        if not math.isfinite(value.sum().item()) and not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or inf")


class DiffusionModel(RecordsInit, nn.Module):
    solvers: tuple = ()
    default_solver: str = ""

    def __init__(self, nn_diffusion: nn.Module, nn_condition: nn.Module | None = None,
                 fix_mask: torch.Tensor | None = None, loss_weight: torch.Tensor | None = None,
                 classifier=None, grad_clip_norm: float | None = None, ema_rate: float = 0.995,
                 optim_params: dict | None = None, x_max: torch.Tensor | None = None,
                 x_min: torch.Tensor | None = None, device: str | torch.device = "cpu",
                 precision: str = "auto", ema_warmup: bool = True):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
        if not 0.0 <= ema_rate < 1.0:
            raise ValueError(f"ema_rate must be in [0, 1), got {ema_rate}")
        self.device = torch.device(device)
        self.model = nn.ModuleDict({
            "diffusion": nn_diffusion, "condition": nn_condition if nn_condition is not None else _NullCondition()
        }).to(self.device)
        self.prepare_networks()
        self.model_ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.ema_rate, self.ema_warmup = ema_rate, ema_warmup
        self.classifier = classifier
        self.grad_clip_norm = grad_clip_norm

        def as_tensor(v):
            return None if v is None else torch.as_tensor(v, dtype=torch.float32, device=self.device)

        self.fix_mask, self.x_max, self.x_min = as_tensor(fix_mask), as_tensor(x_max), as_tensor(x_min)
        weight = as_tensor(loss_weight) if loss_weight is not None else torch.ones((), device=self.device)
        self.loss_weight = weight * (1 - self.fix_mask) if self.fix_mask is not None else weight
        if self.x_max is not None and self.x_min is not None and (self.x_min > self.x_max).any():
            raise ValueError("x_min must be <= x_max everywhere")
        self.x_shape: tuple | None = tuple(self.fix_mask.shape) if self.fix_mask is not None else None

        # fused AdamW: one kernel for all parameters instead of ~10 ops per tensor
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            **{"lr": 2e-4, "weight_decay": 1e-5, "fused": True, **(optim_params or {})})
        self.set_precision(precision)
        self.step = 0
        self.compiled = False
        self._memo_store: dict = {}
        self._scalars: dict[float, torch.Tensor] = {}
        self._params = [p for p in self.model.parameters()]
        self._ema_params = [p for p in self.model_ema.parameters()]

    # ------------------------------------------------------------------ hooks for families
    def prepare_networks(self) -> None:
        """Called before the EMA copy and the optimizer are made (e.g. to add parameters)."""

    def loss(self, x0: torch.Tensor, cond_emb, condition=None, **kwargs) -> tuple[torch.Tensor, dict]:
        """Scalar training loss and extra floats to log (`condition` is the raw condition, for teachers)."""
        raise NotImplementedError

    def predict_x0(self, net: nn.ModuleDict, x: torch.Tensor, alpha: float, sigma: float,
                   noise: torch.Tensor, cond_emb) -> torch.Tensor:
        """x0 prediction at noise level (alpha, sigma) with noise coordinate `noise` (B,)."""
        raise NotImplementedError

    def hparams(self) -> dict:
        """Numbers that define the model's math; a checkpoint must agree on them to load."""
        return {}

    # ------------------------------------------------------------------ shared machinery
    def _autocast_dtype(self, precision: str):
        """auto: bf16 on CPUs with AVX-512 BF16 or AMX (1.1-1.4x more updates/s); fp32 elsewhere, GPUs included:
        at these model sizes a GPU update is launch-bound and autocast's casts made it 8-27% slower on an H100
        (results/bench_algorithms.md). bf16 forces autocast anywhere."""
        if precision == "fp32":
            return None
        ok = self.device.type == "cpu" and cpu_has_fast_bf16()
        if precision == "bf16" or ok:
            return torch.bfloat16
        return None

    def set_precision(self, precision: str) -> None:
        """Switch training/sampling precision ("auto", "bf16", "fp32"); weights stay fp32."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
        self.precision, self.autocast_dtype = precision, self._autocast_dtype(precision)

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # loss methods that compile_network() compiles whole, the denoiser inlined: a family whose loss makes
    # several network passes (consistency models) gains from one graph that shares the weight casts, and one
    # with elementwise work around its network (EDM's preconditioning, DDPM's noising) from fusing it in
    compiled_losses: tuple[str, ...] = ()

    def compile_network(self) -> "DiffusionModel":
        """Compile the training passes with TorchInductor (fused elementwise kernels; on a 2-core CPU about
        1.2x more updates/s): the family's losses whole, and the denoiser module for training passes of
        others (an agent's own loss, differentiable sampling as in Diffusion-QL). The first update
        compiles (tens of seconds); sampling without gradients stays eager, where a compiled call's
        fixed overhead would cost more than it saves."""
        if not self.compiled:
            for name in self.compiled_losses:
                setattr(self, name, torch.compile(getattr(self, name), dynamic=False))
            self.model["diffusion"].compile(dynamic=False)
            self.compiled = True
        return self

    AUTOCAST_MIN_SAMPLES = 64

    def sampling_context(self, requires_grad: bool, prior=None, n_samples: int | None = None):
        """Grad mode for a sampler. Without gradients, a compiled network runs eagerly (a compiled call's fixed
        overhead costs more than it saves there) and batches of >= AUTOCAST_MIN_SAMPLES run under the model's
        autocast (bf16 halves a 256-sample call on AVX-512 BF16 CPUs; at batch 1 the weight casts cost more than
        the matmuls save). Differentiable sampling leaves both to the caller."""
        batch = n_samples if n_samples is not None else (prior.shape[0] if getattr(prior, "ndim", 0) else 0)
        eager = self.compiled and not requires_grad
        cast = not requires_grad and batch >= self.AUTOCAST_MIN_SAMPLES and self.autocast_dtype is not None
        if not (eager or cast):  # the one-observation acting path: a single context, no generator
            return torch.set_grad_enabled(requires_grad)
        return self._combined_context(requires_grad, eager, cast)

    @contextmanager
    def _combined_context(self, requires_grad: bool, eager: bool, cast: bool):
        with (torch.set_grad_enabled(requires_grad),
              torch.compiler.set_stance("force_eager") if eager else nullcontext(),
              self.autocast() if cast else nullcontext()):
            yield

    def train(self, mode: bool = True):
        self.training = mode
        self.model.train(mode)
        self.model_ema.eval()
        return self

    def encode_condition(self, net: nn.ModuleDict, condition, mask=None):
        if condition is None:
            return None
        return net["condition"](condition, mask)

    def weighted(self, err: torch.Tensor) -> torch.Tensor:
        """Apply loss_weight * (1 - fix_mask) elementwise."""
        return err * self.loss_weight

    def inpaint(self, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Overwrite the fixed entries of x_t with the known values x0."""
        if self.fix_mask is None:
            return x_t
        return x_t * (1 - self.fix_mask) + x0 * self.fix_mask

    def clip(self, x0: torch.Tensor) -> torch.Tensor:
        if self.x_min is None and self.x_max is None:
            return x0
        return torch.clamp(x0, min=self.x_min, max=self.x_max)

    def _check_x(self, x: torch.Tensor, name: str, batch: int | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if self.x_shape is not None and tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (batch, *{self.x_shape})")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"{name} has batch {x.shape[0]} but n_samples={batch}")
        if x.dtype is torch.float32 and x.device == self.device:  # skip a no-op .to() on the acting path
            return x
        return x.to(self.device, torch.float32)

    def _check_condition(self, condition, name: str, batch: int):
        if condition is None:
            return None
        if isinstance(condition, torch.Tensor):
            condition = condition if condition.device == self.device else condition.to(self.device)
        elif isinstance(condition, dict):
            condition = {k: v.to(self.device) for k, v in condition.items()}
        else:
            raise TypeError(f"{name} must be a tensor or a dict of tensors, got {type(condition).__name__}")
        if _batch_size(condition) != batch:
            raise ValueError(f"{name} has batch {_batch_size(condition)} but x has batch {batch}")
        _check_finite(condition, name)
        return condition

    @torch.no_grad()
    def ema_update(self) -> None:
        rate = self.ema_rate
        if self.ema_warmup:
            rate = min(rate, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self._ema_params, self._params, 1.0 - rate)

    def update(self, x0: torch.Tensor, condition=None, update_ema: bool = True, **kwargs) -> dict:
        """One gradient step on a batch x0 (B, *x_shape) with an optional raw condition."""
        x0 = self._check_x(x0, "x0")
        _check_finite(x0, "x0")
        condition = self._check_condition(condition, "condition", x0.shape[0])
        if self.x_shape is None:
            self.x_shape = tuple(x0.shape[1:])
        with self.autocast():
            cond_emb = self.encode_condition(self.model, condition)
            loss, log = self.loss(x0, cond_emb, condition, **kwargs)
        loss.backward()
        out = {"loss": loss.item(), **log}
        if self.grad_clip_norm is not None:
            out["grad_norm"] = nn.utils.clip_grad_norm_(self._params, self.grad_clip_norm, foreach=True).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if update_ema:
            self.ema_update()
        self.step += 1
        return out

    # ------------------------------------------------------------------ sampling
    def sample_grid(self, sample_steps: int, sample_step_schedule: str):
        """(alphas, sigmas, noise coordinates) of the grid points, most noise first, clean last."""
        raise NotImplementedError

    def initial_noise(self, prior: torch.Tensor, temperature: float, sigma_max: float) -> torch.Tensor:
        return torch.empty_like(prior).normal_(0.0, temperature * sigma_max)

    def _prepare_sampling(self, prior, n_samples, solver, sample_steps, condition_cfg, w_cfg,
                          condition_cg, w_cg, use_ema, max_steps: int | None, guidance: bool = True,
                          temperature: float = 1.0):
        try:
            finite_nonnegative = 0 <= float(temperature) < math.inf
        except (TypeError, ValueError):
            finite_nonnegative = False
        if not finite_nonnegative:
            raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (1 = the model's noise, "
                             "0 = deterministic start)")
        if not guidance and w_cfg not in (0.0, 1.0):
            raise ValueError(f"{type(self).__name__} supports w_cfg=1 (conditional) or 0 (unconditional), "
                             f"not {w_cfg}: extrapolating one-step outputs leaves the data")
        solver = solver or self.default_solver
        if solver not in self.solvers:
            raise ValueError(f"solver={solver!r} is not available for {type(self).__name__}; "
                             f"choose one of {self.solvers}")
        if not isinstance(sample_steps, int) or sample_steps < 1 or (max_steps is not None and sample_steps > max_steps):
            hi = max_steps if max_steps is not None else "inf"
            raise ValueError(f"sample_steps={sample_steps!r} is out of range [1, {hi}]")
        n_samples = prior.shape[0] if n_samples is None else n_samples
        prior = self._check_x(prior, "prior", n_samples)
        if self.fix_mask is not None:
            _check_finite(prior * self.fix_mask, "prior (fixed entries)")
        condition_cfg = self._check_condition(condition_cfg, "condition_cfg", n_samples)
        if w_cg != 0.0 and self.classifier is None:
            raise ValueError("w_cg != 0 needs a classifier; pass classifier=... to the model")
        condition_cg = self._check_condition(condition_cg, "condition_cg", n_samples)
        net = self.model_ema if use_ema else self.model
        cond_emb = self.encode_condition(net, condition_cfg)
        return solver, prior, net, cond_emb, condition_cg

    def make_denoiser(self, net, cond_emb, w_cfg: float, condition_cg, w_cg: float,
                      alphas, sigmas, noises, batch: int, clip_at=None):
        """A function (x, i) -> guided x0 prediction at grid point i, clipped to [x_min, x_max]
        unless clip_at[i] is False (for samplers whose outputs are still noisy)."""
        if cond_emb is not None and w_cfg == 0.0:  # unconditional: the null (zero) embedding
            cond_emb, w_cfg = torch.zeros_like(cond_emb), 1.0
        guided = cond_emb is not None and w_cfg != 1.0
        if guided:
            cond_emb = torch.cat([cond_emb, torch.zeros_like(cond_emb)])
        noise_vecs = self._noise_vectors(tuple(noises), batch * (2 if guided else 1))

        def denoise(x, i):
            a, s = alphas[i], sigmas[i]
            if guided:
                x0c, x0u = self.predict_x0(net, torch.cat([x, x]), a, s, noise_vecs[i], cond_emb).chunk(2)
                x0 = x0u + w_cfg * (x0c - x0u)
            else:
                x0 = self.predict_x0(net, x, a, s, noise_vecs[i], cond_emb)
            if w_cg != 0.0 and a > 0:  # no guidance at pure noise (rectified flow's t = 1)
                _, grad = self.classifier.gradients(x, noise_vecs[i][:batch], condition_cg)
                x0 = x0 + (w_cg * s * s / a) * grad
            return self.clip(x0) if clip_at is None or clip_at[i] else x0

        return denoise

    def memo(self, key, build):
        """build() once per key and keep it: grids, noise-coordinate tensors and other read-only
        values a sampler or loss would otherwise rebuild on every call (bounded)."""
        if key not in self._memo_store:
            if len(self._memo_store) > 256:
                self._memo_store.clear()
            self._memo_store[key] = build()
        return self._memo_store[key]

    def scale(self, x: torch.Tensor, c: float) -> torch.Tensor:
        """c * x for a Python float c, through a cached 0-dim tensor: ATen's Python-scalar multiply costs
        ~4 us more per call on a small CPU tensor, a large part of a one-step sampler's overhead."""
        s = self._scalars.get(c)
        if s is None:
            if len(self._scalars) > 4096:
                self._scalars.clear()
            with torch.inference_mode(False):  # cached for later calls that may need gradients
                s = self._scalars[c] = torch.tensor(float(c), device=self.device)
        return x * s

    def affine(self, out: torch.Tensor, c_out: float, x: torch.Tensor, c_skip: float) -> torch.Tensor:
        """c_out * out + c_skip * x for Python floats (a preconditioned denoiser's output at a sampling step):
        two cheap ops, `scale` and an in-place add with alpha, into a new tensor."""
        return self.scale(out, c_out).add_(x, alpha=c_skip)

    def _noise_vectors(self, noises: tuple, batch: int) -> list[torch.Tensor]:
        """Noise-coordinate tensors (batch,) or (batch, 2) per grid point (read-only, so memoized)."""
        return self.memo(("noise", noises, batch), lambda: [
            torch.full((batch,), c, device=self.device) if np.ndim(c) == 0 else
            torch.tensor(c, dtype=torch.float32, device=self.device).expand(batch, len(c)) for c in noises])

    def sample(self, prior: torch.Tensor, solver: str | None = None, n_samples: int | None = None,
               sample_steps: int = 5, sample_step_schedule: str = "uniform", use_ema: bool = True,
               temperature: float = 1.0, condition_cfg=None, mask_cfg=None, w_cfg: float = 1.0,
               condition_cg=None, w_cg: float = 0.0, requires_grad: bool = False,
               preserve_history: bool = False, x_T: torch.Tensor | None = None):
        """Draw samples; returns (x0, log).

        prior (n_samples, *x_shape) holds the fixed entries (fix_mask) and is otherwise ignored.
        w_cfg: 1 = conditional (default), 0 = unconditional, > 1 = classifier-free guidance.
        x_T: start from this sample instead of fresh noise.
        log = {"sample_history": (n, steps + 1, *x_shape) or None, "nfe": network evaluations}."""
        if mask_cfg is not None:
            raise ValueError("mask_cfg is not supported; drop condition entries with the condition encoder")
        with self.sampling_context(requires_grad, prior, n_samples):
            solver, prior, net, cond_emb, condition_cg = self._prepare_sampling(
                prior, n_samples, solver, sample_steps, condition_cfg, w_cfg, condition_cg, w_cg, use_ema,
                self.max_sample_steps(), temperature=temperature)
            alphas, sigmas, noises = self.memo(("grid", sample_steps, sample_step_schedule),
                                               lambda: self.sample_grid(sample_steps, sample_step_schedule))
            denoise = self.make_denoiser(net, cond_emb, w_cfg, condition_cg, w_cg, alphas, sigmas, noises,
                                         prior.shape[0])
            x = self.initial_noise(prior, temperature, sigmas[0]) if x_T is None else self._check_x(
                x_T, "x_T", prior.shape[0])
            x = self.inpaint(x, prior)
            history = None
            if preserve_history:
                history = torch.empty((prior.shape[0], len(sigmas), *prior.shape[1:]), device=self.device)
            constrain = (lambda v: self.inpaint(v, prior)) if self.fix_mask is not None else None
            x = solve(denoise, x, alphas, sigmas, solver, constrain, history)
        return x, {"sample_history": history, "nfe": solver_nfe(solver, len(sigmas) - 1)}

    def max_sample_steps(self) -> int | None:
        return None

    # ------------------------------------------------------------------ persistence
    def extra_state(self) -> dict:
        """JSON-able training state of a family (e.g. the CT curriculum)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def checkpoint_state(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON meta) of networks, EMA, optimizer, step and hyperparameters, tensor keys
        under `prefix`; what save() writes and what an agent embeds in its own checkpoint."""
        tensors = {f"{prefix}model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"{prefix}model_ema.{k}": v for k, v in self.model_ema.state_dict().items()})
        optim_skeleton = flatten_state(self.optimizer.state_dict(), f"{prefix}optimizer", tensors)
        meta = {
            "format": 1, "class": type(self).__name__, "config": self.init_config(), "step": self.step,
            "x_shape": list(self.x_shape) if self.x_shape is not None else None,
            "hparams": self.hparams(), "optimizer": optim_skeleton, "extra": self.extra_state(),
        }
        return tensors, meta

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "",
                              load_optimizer: bool = True, source: str = "checkpoint"):
        """Inverse of checkpoint_state(); `source` names the file in error messages."""
        if meta.get("class") != type(self).__name__:
            raise ValueError(f"{source} holds a {meta.get('class')}, not a {type(self).__name__}")
        mismatched = {k: (v, meta["hparams"].get(k)) for k, v in self.hparams().items()
                      if meta["hparams"].get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k}: model {a!r} vs checkpoint {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"{source} was saved with different settings: {detail}")
        for part, module in (("model.", self.model), ("model_ema.", self.model_ema)):
            head = prefix + part
            state = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
            _check_shapes(module, state, source)
            missing, unexpected = module.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{source} does not match the networks: missing {missing}, "
                                 f"unexpected {unexpected}")
        if load_optimizer and meta.get("optimizer") is not None:
            self.optimizer.load_state_dict(unflatten_state(meta["optimizer"], tensors))
        self.step = meta.get("step", 0)
        self.x_shape = tuple(meta["x_shape"]) if meta.get("x_shape") is not None else self.x_shape
        self.load_extra_state(meta.get("extra", {}))
        return self

    def save(self, path) -> None:
        """Atomically write networks, EMA, optimizer, step, RNG state and hyperparameters."""
        tensors, meta = self.checkpoint_state()
        tensors["rng.torch"] = torch.get_rng_state()
        save_checkpoint(path, tensors, meta)

    def load(self, path, load_optimizer: bool = True, restore_rng: bool = False):
        """Load a checkpoint written by save(). Nothing is executed; mismatches raise."""
        tensors, meta = load_checkpoint(path)
        self.load_checkpoint_state(tensors, meta, load_optimizer=load_optimizer, source=str(path))
        if restore_rng:
            torch.set_rng_state(tensors["rng.torch"])
        return self


def _check_shapes(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """CheckpointError listing the tensors whose shapes differ between a checkpoint and the network (another
    network size), instead of load_state_dict's multi-line RuntimeError."""
    ours = module.state_dict()
    differ = [f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in state.items()
              if k in ours and v.shape != ours[k].shape]
    if differ:
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise CheckpointError(f"{source} was saved from networks of another size (checkpoint vs model shapes: "
                              f"{'; '.join(differ[:3])}{more}); build the model with the checkpoint's settings")


def load_model(path, device: str | torch.device | None = None, **overrides) -> DiffusionModel:
    """Rebuild a model from its checkpoint alone (networks included) and load its weights."""
    _, meta = load_checkpoint(path)
    kind = meta.get("format")
    if isinstance(kind, str):  # a trainer's run or policy checkpoint ("cleandiffuser-run/1"), not one model's
        raise CheckpointError(f"{path} is a {kind!r} checkpoint (a whole run), not one model's: load it with "
                              "cleandiffuser.runner.load_agent (offline RL) or cleandiffuser.imitation.get_policy")
    config = meta.get("config")
    if config is None:
        raise CheckpointError(f"{path} does not record how to rebuild its model (a constructor argument was not "
                              "JSON-serializable); build the model yourself and call .load(path)")
    if not isinstance(config, dict) or not isinstance(config.get("kwargs"), dict):
        raise CheckpointError(f"{path}: its 'config' entry is not {{'__class__': ..., 'kwargs': {{...}}}}")
    config = copy.deepcopy(config)
    if device is not None:
        config["kwargs"]["device"] = str(device)
    config["kwargs"].update(overrides)
    return build_from_config(config, source=str(path)).load(path)
