"""Consistency models (Song et al. 2023) with improved consistency training (Song & Dhariwal 2023).

f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, ln(s) / 4), with c_skip(s_min) = 1, c_out(s_min) = 0.
- Consistency training (CT, `loss_type="training"`): doubling curriculum N(k), lognormal pair
  sampling, pseudo-Huber distance on the vector norm, weight 1 / (s_{i+1} - s_i), and the target is
  the online network under stop-gradient (no EMA teacher).
- Consistency distillation (CD, `loss_type="distillation"`): one Heun (or Euler) step of a frozen
  EDM teacher from s_{n+1} to s_n on a Karras grid of `distillation_N` levels; same distance,
  weight and stop-gradient target as CT.
Sampling: multistep consistency sampling (jump to data, re-noise to the next level, jump again).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

from .base import DiffusionModel, as_float32
from .edm import ContinuousEDM
from .schedules import karras_sigmas


@dataclass
class CurriculumLogger:
    """Where consistency training is in its curriculum: fraction done and the current N(k)."""
    curriculum_process: float = 0.0
    Nk: int = 0


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float, weight=None) -> torch.Tensor:
    """sqrt(||a - b||^2 + c^2) - c per sample (over all non-batch dims)."""
    diff = (a - b) ** 2 if weight is None else (a - b) ** 2 * weight
    return (diff.flatten(1).sum(1) + c * c).sqrt() - c


def jump_sample(model: DiffusionModel, prior, net, cond_emb, w_cfg, levels, renoise, temperature,
                x_T, preserve_history, clip_at=None):
    """Shared loop of consistency-style samplers: x <- denoise(x + renoise[i] z, i) for each level i.
    levels = (alphas, sigmas, noises) as in `make_denoiser`; renoise[0] is the initial noise scale."""
    alphas, sigmas, noises = levels
    batch = prior.shape[0]
    denoise = model.make_denoiser(net, cond_emb, w_cfg, None, 0.0, alphas, sigmas, noises, batch, clip_at)
    x = torch.empty_like(prior).normal_(0.0, renoise[0] * temperature) if x_T is None else \
        model._check_x(x_T, "x_T", batch)
    history = torch.empty((batch, len(renoise) + 1, *prior.shape[1:]), device=prior.device) \
        if preserve_history else None
    x = model.inpaint(x, prior)
    for i in range(len(renoise)):
        if i > 0 and renoise[i] > 0:
            x = model.inpaint(torch.empty_like(x).normal_(0.0, renoise[i] * temperature).add_(x), prior)
        if history is not None:
            history[:, i] = x
        x = model.inpaint(denoise(x, i), prior)
    if history is not None:
        history[:, -1] = x
    return x, {"sample_history": history, "nfe": len(renoise)}


def check_teacher(student: DiffusionModel, edm, teacher_solver: str) -> None:
    """A distillation teacher must be an EDM with the student's noise range, bounds and mask."""
    if not isinstance(edm, ContinuousEDM):
        raise TypeError(f"the teacher must be a ContinuousEDM, got {type(edm).__name__}")
    if teacher_solver not in ("heun", "euler"):
        raise ValueError(f"teacher_solver={teacher_solver!r} is not one of ('heun', 'euler')")
    for name in ("sigma_data", "sigma_min", "sigma_max"):
        if getattr(edm, name) != getattr(student, name):
            raise ValueError(f"teacher {name}={getattr(edm, name)} differs from the student's "
                             f"{name}={getattr(student, name)}")
    for name in ("x_max", "x_min", "fix_mask"):
        a, b = getattr(edm, name), getattr(student, name)
        if (a is None) != (b is None) or (a is not None and not torch.equal(a.to(b.device), b)):
            raise ValueError(f"teacher {name} differs from the student's {name}")


def copy_teacher_weights(student: DiffusionModel, edm, strict: bool) -> None:
    """Start the student (and its EMA) from the teacher's EMA weights; non-strict allows extra
    zero-initialized student parameters (CTM's target-time projection)."""
    state = edm.model_ema.state_dict()
    for module in (student.model, student.model_ema):
        try:
            missing, unexpected = module.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise ValueError(f"the student's networks must match the teacher's: {e}") from e
        if unexpected or (missing and strict) or any("target_proj" not in k for k in missing):
            raise ValueError(f"the student's networks must match the teacher's: missing {missing}, "
                             f"unexpected {unexpected}")


class ContinuousConsistencyModel(DiffusionModel):
    solvers = ("consistency",)
    default_solver = "consistency"
    # online, target (and CD's two teacher) passes in one graph: ~1.1x (CT) and ~1.2x (CD) more updates/s
    # than compiling the network alone; the random draws stay outside, so compiled and eager draw alike
    compiled_losses = ("_ct_loss", "_cd_loss")

    def __init__(self, nn_diffusion, nn_condition=None, fix_mask=None, loss_weight=None, classifier=None,
                 grad_clip_norm=None, ema_rate=0.9999, optim_params=None, s0: int = 10, s1: int = 1280,
                 data_dim: int | None = None, P_mean: float = -1.1, P_std: float = 2.0,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5, rho: float = 7.0,
                 curriculum_cycle: int = 100_000, x_max=None, x_min=None, device="cpu", precision="auto",
                 ema_warmup=True):
        if classifier is not None:
            raise ValueError("consistency models do not support classifier guidance (classifier must be None)")
        if not 0 < s0 <= s1:
            raise ValueError(f"need 0 < s0 <= s1, got s0={s0}, s1={s1}")
        if curriculum_cycle < 1:
            raise ValueError(f"curriculum_cycle must be >= 1, got {curriculum_cycle}")
        super().__init__(nn_diffusion, nn_condition, fix_mask, loss_weight, None, grad_clip_norm, ema_rate,
                         optim_params, x_max, x_min, device, precision, ema_warmup)
        self.s0, self.s1, self.data_dim = s0, s1, data_dim
        self.P_mean, self.P_std, self.rho = P_mean, P_std, rho
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.curriculum_cycle = curriculum_cycle
        self.cur_logger = CurriculumLogger()
        self.ct_steps = 0  # consistency-training updates so far: the curriculum's k
        self.teacher: ContinuousEDM | None = None
        self.distillation_N: int | None = None
        self.teacher_solver = "heun"
        self.cd_target, self.cd_distance, self.cd_clip = "online", "pseudo_huber", False

    # ------------------------------------------------------------------ the consistency function
    def consistency(self, net, x, sigma, cond_emb, noise=None):
        """f(x, sigma); sigma a float or a (B,) tensor."""
        sd, smin = self.sigma_data, self.sigma_min
        c_skip = sd ** 2 / ((sigma - smin) ** 2 + sd ** 2)
        c_out = (sigma - smin) * sd / (sigma ** 2 + sd ** 2) ** 0.5
        c_in = 1 / (sigma ** 2 + sd ** 2) ** 0.5
        if isinstance(sigma, torch.Tensor):
            shape = (-1, *([1] * (x.dim() - 1)))
            c_skip, c_out, c_in = c_skip.view(shape), c_out.view(shape), c_in.view(shape)
            noise = 0.25 * torch.log(sigma) if noise is None else noise
            return c_skip * x + c_out * net["diffusion"](c_in * x, noise, cond_emb).float()
        if not c_out:
            return x
        out = as_float32(net["diffusion"](self.scale(x, c_in), noise, cond_emb))
        return self.affine(out, c_out, x, c_skip)

    def predict_x0(self, net, x, alpha, sigma, noise, cond_emb):
        return self.consistency(net, x, sigma, cond_emb, noise)

    # ------------------------------------------------------------------ curriculum (iCT)
    def curriculum_N(self, k: int) -> int:
        """N(k) = min(s0 * 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1))."""
        k_prime = max(1, math.floor(self.curriculum_cycle / (math.log2(math.floor(self.s1 / self.s0)) + 1)))
        return min(self.s0 * 2 ** (k // k_prime), self.s1) + 1

    def _pairs(self, n: int):
        """Ascending Karras sigmas (n levels) and the lognormal probability of each adjacent pair."""
        def build():
            sig = karras_sigmas(n, self.sigma_min, self.sigma_max, self.rho)[::-1].copy()
            cdf = np.array([math.erf((math.log(s) - self.P_mean) / (math.sqrt(2) * self.P_std)) for s in sig])
            p = np.clip(cdf[1:] - cdf[:-1], 1e-12, None)
            return (torch.tensor(sig, dtype=torch.float32, device=self.device),
                    torch.tensor(p / p.sum(), dtype=torch.float32, device=self.device))
        return self.memo(("pairs", n), build)

    def _huber_c(self, x0):
        return 0.00054 * math.sqrt(self.data_dim or x0[0].numel())

    def _pair_loss(self, x0, cond_emb, s_lo, s_hi, x_hi, x_lo, target_net=None, target_emb=None,
                   distance: str = "pseudo_huber", clip: bool = False):
        """Weighted distance between f(x_hi, s_hi) and the stop-gradient target f(x_lo, s_lo), and the
        unweighted distance (a tensor, so that this stays one compiled graph). The target runs through
        `target_net` with `target_emb` (default: the online network and its embedding). distance:
        "pseudo_huber" on each sample's vector, or "l2", the squared error averaged over elements (Song et al.
        2023 and the public CleanDiffuser). clip: both outputs clipped to [x_min, x_max], as sampling clips."""
        online = self.consistency(self.model, self.inpaint(x_hi, x0), s_hi, cond_emb)
        with torch.no_grad():
            target = self.consistency(self.model if target_net is None else target_net, self.inpaint(x_lo, x0),
                                      s_lo, cond_emb if target_net is None else target_emb)
        if clip:
            online, target = self.clip(online), self.clip(target)
        if distance == "l2":
            dist = ((online - target) ** 2 * self.loss_weight).flatten(1).mean(1)
        else:
            dist = pseudo_huber(online, target, self._huber_c(x0), self.loss_weight)
        return (dist / (s_hi - s_lo)).mean(), dist.detach().mean()

    def _ct_loss(self, x0, cond_emb, s_lo, s_hi, z):
        shape = (-1, *([1] * (x0.dim() - 1)))
        return self._pair_loss(x0, cond_emb, s_lo, s_hi, x0 + s_hi.view(shape) * z, x0 + s_lo.view(shape) * z)

    def _cd_loss(self, x0, cond_emb, condition, s_lo, s_hi, z):
        x_hi = x0 + s_hi.view(-1, *([1] * (x0.dim() - 1))) * z
        x_lo = self._teacher_step(x_hi, s_hi, s_lo, x0, condition)
        target_net = target_emb = None
        if self.cd_target == "ema":
            target_net = self.model_ema
            with torch.no_grad():
                target_emb = self.encode_condition(target_net, condition)
        return self._pair_loss(x0, cond_emb, s_lo, s_hi, x_hi, x_lo, target_net, target_emb, self.cd_distance,
                               self.cd_clip)

    def loss(self, x0, cond_emb, condition=None, loss_type: str = "training", **kwargs):
        if loss_type == "training":
            n = self.curriculum_N(self.ct_steps)
            sig, p = self._pairs(n)
            i = torch.multinomial(p, x0.shape[0], replacement=True)
            loss, unweighted = self._ct_loss(x0, cond_emb, sig[i], sig[i + 1], torch.randn_like(x0))
            self.ct_steps += 1
            self.cur_logger.curriculum_process = min(1.0, self.ct_steps / self.curriculum_cycle)
            self.cur_logger.Nk = n
            return loss, {"unweighted_loss": unweighted.item()}
        if loss_type == "distillation":
            if self.teacher is None:
                raise RuntimeError("call prepare_distillation(edm) before update(..., loss_type='distillation')")
            sig, _ = self._pairs(self.distillation_N)
            i = torch.randint(0, self.distillation_N - 1, (x0.shape[0],), device=self.device)
            loss, unweighted = self._cd_loss(x0, cond_emb, condition, sig[i], sig[i + 1], torch.randn_like(x0))
            return loss, {"unweighted_loss": unweighted.item()}
        raise ValueError(f"loss_type={loss_type!r} is not one of ('training', 'distillation')")

    @torch.no_grad()
    def _teacher_step(self, x, s_from, s_to, x0, condition):
        """One Euler or Heun step of the teacher's probability-flow ODE from s_from to s_to."""
        teacher = self.teacher
        net = teacher.model_ema
        emb = teacher.encode_condition(net, condition)
        shape = (-1, *([1] * (x.dim() - 1)))
        ds = (s_to - s_from).view(shape)
        d = (x - teacher.denoise(net, x, s_from, emb)) / s_from.view(shape)
        x_next = self.inpaint(x + ds * d, x0)
        if self.teacher_solver == "euler":
            return x_next
        d2 = (x_next - teacher.denoise(net, x_next, s_to, emb)) / s_to.view(shape)
        return x + ds * 0.5 * (d + d2)

    def prepare_distillation(self, edm: ContinuousEDM, distillation_N: int = 18, teacher_solver: str = "heun",
                             target: str = "online", distance: str = "pseudo_huber", clip: bool = False):
        """Distil from a trained EDM: checks the settings match and starts from its (EMA) weights.

        teacher_solver: the teacher's ODE step between adjacent levels, "heun" or "euler".
        target: the network under stop-gradient that gives the target f(x_lo, s_lo): "online" (the
        student itself, as improved consistency training does) or "ema" (the student's EMA, model_ema,
        as in Song et al. 2023 and the public CleanDiffuser; its rate is the model's ema_rate).
        distance: "pseudo_huber" or "l2" (squared error). clip: clip both f's to [x_min, x_max] in the loss."""
        if not isinstance(distillation_N, int) or distillation_N < 2:
            raise ValueError(f"distillation_N must be an int >= 2, got {distillation_N!r}")
        if target not in ("online", "ema"):
            raise ValueError(f"target={target!r} is not one of ('online', 'ema')")
        if distance not in ("pseudo_huber", "l2"):
            raise ValueError(f"distance={distance!r} is not one of ('pseudo_huber', 'l2')")
        check_teacher(self, edm, teacher_solver)
        copy_teacher_weights(self, edm, strict=True)
        object.__setattr__(self, "teacher", edm)  # not a submodule: never saved, trained or moved with us
        self.distillation_N, self.teacher_solver = distillation_N, teacher_solver
        self.cd_target, self.cd_distance, self.cd_clip = target, distance, bool(clip)
        edm.eval()
        return self

    # ------------------------------------------------------------------ sampling
    def sample(self, prior, solver=None, n_samples=None, sample_steps: int = 1, sample_step_schedule=None,
               use_ema=True, temperature=1.0, condition_cfg=None, mask_cfg=None, w_cfg=1.0, condition_cg=None,
               w_cg=0.0, requires_grad=False, preserve_history=False, x_T=None):
        """Multistep consistency sampling: f at sigma_max, then re-noise to each lower level of a Karras
        grid of sample_steps + 1 levels (sigma_min excluded) and apply f again. Returns (x0, log)."""
        if mask_cfg is not None:
            raise ValueError("mask_cfg is not supported")
        if w_cg != 0.0:
            raise ValueError("consistency models do not support classifier guidance (w_cg must be 0)")
        with self.sampling_context(requires_grad, prior, n_samples):
            solver, prior, net, cond_emb, _ = self._prepare_sampling(
                prior, n_samples, solver, sample_steps, condition_cfg, w_cfg, None, 0.0, use_ema, None,
                guidance=False, temperature=temperature)
            levels, renoise = self._levels(sample_steps)
            return jump_sample(self, prior, net, cond_emb, w_cfg, levels, renoise, temperature, x_T,
                               preserve_history)

    def _levels(self, sample_steps: int):
        """(alphas, sigmas, noise coordinates) and re-noise scales of the sampler."""
        def build():
            taus = karras_sigmas(sample_steps + 1, self.sigma_min, self.sigma_max, self.rho)[:sample_steps].tolist()
            renoise = [taus[0]] + [math.sqrt(t * t - self.sigma_min ** 2) for t in taus[1:]]
            return ([1.0] * sample_steps, taus, [0.25 * math.log(t) for t in taus]), renoise
        return self.memo(("levels", sample_steps), build)

    # ------------------------------------------------------------------ persistence
    def hparams(self):
        return {"sigma_data": self.sigma_data, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "s0": self.s0, "s1": self.s1, "curriculum_cycle": self.curriculum_cycle}

    def extra_state(self):
        return {"ct_steps": self.ct_steps, "curriculum_process": self.cur_logger.curriculum_process,
                "Nk": self.cur_logger.Nk}

    def load_extra_state(self, state):
        self.ct_steps = state.get("ct_steps", 0)
        self.cur_logger = CurriculumLogger(state.get("curriculum_process", 0.0), state.get("Nk", 0))
