"""Consistency trajectory model (Kim et al. 2024), the student of Consistency Policy (Prasad et al. 2024).

g(x, t, s) = c_skip(t) x + c_out(t) F(c_in(t) x, (ln(t) / 4, ln(s) / 4)) with EDM's preconditioning, and
G(x, t, s) = (s / t) x + (1 - s / t) g(x, t, s) jumps along the teacher's ODE from level t to s < t.
Training (per batch, on a Karras grid of bins + 1 levels, index 0 = sigma_max):
  t ~ U{0..bins-1}, s ~ U{t..bins}, u = min(U{t..s}, t + ode_steps_max); x_u = teacher Heun steps t -> u;
  L_CTM = d(G'(G(x_t, t, s), s, smin), G'(G'(x_u, u, s), s, smin)) with G' = current weights without
  gradient (the gradient flows through the first G only), d = pseudo-Huber on the vector norm;
  L_DSM = lambda(sigma) ||g(x_sigma, sigma, sigma) - x0||^2 (g at s = t is the denoiser), sigma half
  from the grid, half lognormal;
  L = ctm_weight * L_CTM + dsm_weight * L_DSM.
Warm start: the student starts as the teacher (its target-time projection is zero-initialized), so
G(x, t, s) is then exactly one Euler step of the teacher.
Sampling: "chain" (jump to sigma_min, re-noise at the next chaining level, repeat; 1 step = one NFE)
or "anystep" (deterministic jumps t_0 -> t_1 -> ... -> sigma_min along the grid).
"""
import math

import numpy as np
import torch
from torch.func import functional_call

from .base import DiffusionModel, as_float32
from .consistency_model import check_teacher, copy_teacher_weights, jump_sample, pseudo_huber
from .edm import ContinuousEDM, edm_precondition
from .schedules import karras_sigmas


def _rows(emb, index: torch.Tensor):
    """The rows `index` of a condition embedding (a tensor, a dict of tensors, or None)."""
    if emb is None:
        return None
    if isinstance(emb, dict):
        return {k: _rows(v, index) for k, v in emb.items()}
    return emb[index]


class ConsistencyTrajectoryModel(DiffusionModel):
    solvers = ("chain", "anystep")
    default_solver = "chain"

    def __init__(self, nn_diffusion, nn_condition=None, fix_mask=None, loss_weight=None, grad_clip_norm=None,
                 ema_rate=0.999, optim_params=None, sigma_data: float = 0.5, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0, P_mean: float = -1.2, P_std: float = 1.2,
                 bins: int = 80, ctm_weight: float = 1.0, dsm_weight: float = 1.0, ode_steps_max: int = 1,
                 x_max=None, x_min=None, device="cpu", precision="auto", ema_warmup=True):
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an int >= 2, got {bins!r}")
        if ode_steps_max < 1:
            raise ValueError(f"ode_steps_max must be >= 1, got {ode_steps_max}")
        super().__init__(nn_diffusion, nn_condition, fix_mask, loss_weight, None, grad_clip_norm, ema_rate,
                         optim_params, x_max, x_min, device, precision, ema_warmup)
        self.sigma_data, self.sigma_min, self.sigma_max, self.rho = sigma_data, sigma_min, sigma_max, rho
        self.P_mean, self.P_std, self.bins = P_mean, P_std, bins
        self.ctm_weight, self.dsm_weight, self.ode_steps_max = ctm_weight, dsm_weight, ode_steps_max
        self.grid = torch.tensor(karras_sigmas(bins + 1, sigma_min, sigma_max, rho), dtype=torch.float32,
                                 device=self.device)
        self.teacher: ContinuousEDM | None = None
        self.teacher_solver = "heun"

    def prepare_networks(self):
        if not hasattr(self.model["diffusion"], "enable_target_time"):
            raise TypeError("ConsistencyTrajectoryModel needs a BaseNNDiffusion backbone (enable_target_time)")
        self.model["diffusion"].enable_target_time()

    # ------------------------------------------------------------------ G(x, t, s)
    def g(self, net, x, t, s, cond_emb, noise=None, params=None):
        """g(x, t, s) = c_skip(t) x + c_out(t) F(c_in(t) x, (t, s)); t, s floats or (B,) tensors.
        `params` replaces the backbone's weights (functional call, for stop-gradient targets)."""
        out, c_skip, c_out = self._network(net, x, t, s, cond_emb, noise, params)
        if isinstance(t, torch.Tensor):
            return c_skip * x + c_out * out
        return self.affine(out, c_out, x, c_skip)

    def jump(self, net, x, t, s, cond_emb, noise=None, params=None):
        """G(x, t, s) = (s / t) x + (1 - s / t) g(x, t, s)."""
        ratio = s / t
        if isinstance(ratio, torch.Tensor):
            ratio = ratio.view(-1, *([1] * (x.dim() - 1)))
            return ratio * x + (1 - ratio) * self.g(net, x, t, s, cond_emb, noise, params)
        out, c_skip, c_out = self._network(net, x, t, s, cond_emb, noise, params)  # sampling: one affine op
        return self.affine(out, (1 - ratio) * c_out, x, ratio + (1 - ratio) * c_skip)

    def _network(self, net, x, t, s, cond_emb, noise, params):
        """(F(c_in(t) x, (t, s)) in float32, c_skip(t), c_out(t)), coefficients shaped to broadcast."""
        c_skip, c_out, c_in = edm_precondition(t, self.sigma_data)
        if isinstance(t, torch.Tensor):
            shape = (-1, *([1] * (x.dim() - 1)))
            c_skip, c_out, c_in = (v.view(shape) for v in (c_skip, c_out, c_in))
            noise = 0.25 * torch.stack([torch.log(t), torch.log(s)], dim=1) if noise is None else noise
            x_in = c_in * x
        else:
            x_in = self.scale(x, c_in)
        backbone = net["diffusion"]
        args = (x_in, noise, cond_emb)
        out = backbone(*args) if params is None else functional_call(backbone, params, args)
        return as_float32(out), c_skip, c_out

    def predict_x0(self, net, x, alpha, sigma, noise, cond_emb):
        t, s = sigma
        return self.jump(net, x, t, s, cond_emb, noise)

    # ------------------------------------------------------------------ training
    def prepare_distillation(self, edm: ContinuousEDM, warm_start: bool = True, teacher_solver: str = "heun",
                             freeze_condition: bool = False):
        """Use a trained EDM as the teacher; warm start copies its EMA weights into the student."""
        check_teacher(self, edm, teacher_solver)
        if warm_start:
            copy_teacher_weights(self, edm, strict=False)
        if freeze_condition:
            self.model["condition"].requires_grad_(False)
        object.__setattr__(self, "teacher", edm)  # not a submodule: never saved, trained or moved with us
        self.teacher_solver = teacher_solver
        edm.eval()
        return self

    @torch.no_grad()
    def _teacher_solve(self, x, i_from, i_to, x0, condition):
        """Teacher Heun (or Euler) steps along the grid from index i_from to i_to >= i_from, per sample. Each step
        runs the teacher on the samples that still move only (with ode_steps_max 4 on 20 bins, 1.8 of the 4
        steps on average), so a longer solve costs what its samples need."""
        teacher = self.teacher
        net = teacher.model_ema
        emb = teacher.encode_condition(net, condition)
        shape = (-1, *([1] * (x.dim() - 1)))
        x, i = x.clone(), i_from.clone()
        live = torch.nonzero(i < i_to).squeeze(1)
        for _ in range(self.ode_steps_max):
            if live.numel() == 0:
                break
            xa, x0a, ea = x[live], x0[live], _rows(emb, live)
            s_a, s_b = self.grid[i[live]], self.grid[i[live] + 1]
            d = (xa - teacher.denoise(net, xa, s_a, ea)) / s_a.view(shape)
            x_e = self.inpaint(xa + (s_b - s_a).view(shape) * d, x0a)
            if self.teacher_solver == "heun":
                d2 = (x_e - teacher.denoise(net, x_e, s_b, ea)) / s_b.view(shape)
                x_e = self.inpaint(xa + (s_b - s_a).view(shape) * 0.5 * (d + d2), x0a)
            x[live] = x_e
            i[live] += 1
            live = live[i[live] < i_to[live]]
        return x

    def loss(self, x0, cond_emb, condition=None, **kwargs):
        if self.teacher is None:
            raise RuntimeError("call prepare_distillation(edm) before training a ConsistencyTrajectoryModel")
        b, shape = x0.shape[0], (-1, *([1] * (x0.dim() - 1)))
        dev = self.device
        t_i = torch.randint(0, self.bins, (b,), device=dev)
        s_i = t_i + (torch.rand(b, device=dev) * (self.bins - t_i + 1)).long().clamp(max=self.bins - t_i)
        u_i = t_i + (torch.rand(b, device=dev) * (s_i - t_i + 1)).long().clamp(max=s_i - t_i)
        u_i = torch.minimum(u_i, t_i + self.ode_steps_max)
        t, s, u = self.grid[t_i], self.grid[s_i], self.grid[u_i]
        smin = torch.full_like(t, self.sigma_min)
        z = torch.randn_like(x0)
        x_t = self.inpaint(x0 + t.view(shape) * z, x0)

        # DSM levels: half on the grid, half lognormal
        half = b // 2
        sig = torch.cat([self.grid[torch.randint(0, self.bins + 1, (half,), device=dev)],
                         (torch.randn(b - half, device=dev) * self.P_std + self.P_mean).exp()])
        sig = sig.clamp(self.sigma_min * 1.0001, self.sigma_max)
        x_sig = self.inpaint(x0 + sig.view(shape) * torch.randn_like(x0), x0)

        # one forward with gradient for both losses: g(x_t, t, s) for the jump, g(x_sig, sig, sig) for DSM
        cond2 = None if cond_emb is None else torch.cat([cond_emb, cond_emb])
        out = self.g(self.model, torch.cat([x_t, x_sig]), torch.cat([t, sig]), torch.cat([s, sig]), cond2)
        ratio = (s / t).view(shape)
        est, dsm_pred = self.inpaint(ratio * x_t + (1 - ratio) * out[:b], x0), out[b:]

        frozen = {k: v.detach() for k, v in self.model["diffusion"].named_parameters()}
        with torch.no_grad():
            x_u = self._teacher_solve(x_t, t_i, u_i, x0, condition)
            target = self.inpaint(self.jump(self.model, x_u, u, s, cond_emb), x0)
            target = self.jump(self.model, target, s, smin, cond_emb)
        est = self.jump(self.model, est, s, smin, cond_emb, params=frozen)
        c = 0.00054 * math.sqrt(x0[0].numel())
        l_ctm = pseudo_huber(est, target, c, self.loss_weight).mean()
        lam = (sig ** 2 + self.sigma_data ** 2) / (sig * self.sigma_data) ** 2
        l_dsm = (lam.view(shape) * self.weighted((dsm_pred - x0) ** 2)).mean()
        loss = self.ctm_weight * l_ctm + self.dsm_weight * l_dsm
        return loss, {"ctm_loss": l_ctm.item(), "dsm_loss": l_dsm.item()}

    # ------------------------------------------------------------------ sampling
    def chaining_sigmas(self, sample_steps: int, chaining_times=None) -> list[float]:
        """Levels (sigmas) to chain at: grid indices evenly spaced over the bins (0, N/k, 2N/k, ...)
        unless `chaining_times` (grid indices, first one 0 or 'D' for sigma_max) are given."""
        if chaining_times is None:
            idx = [round(j * self.bins / sample_steps) for j in range(sample_steps)]
        else:
            idx = [0 if c == "D" else int(c) for c in chaining_times]
            if any(not 0 <= i < self.bins for i in idx) or idx != sorted(set(idx)):
                raise ValueError(f"chaining_times={chaining_times!r} must be increasing grid indices in "
                                 f"[0, {self.bins - 1}]")
        return [float(self.grid[i]) for i in idx]

    def sample(self, prior, solver=None, n_samples=None, sample_steps: int = 1, sample_step_schedule=None,
               use_ema=True, temperature=1.0, condition_cfg=None, mask_cfg=None, w_cfg=1.0, condition_cg=None,
               w_cg=0.0, requires_grad=False, preserve_history=False, x_T=None, chaining_times=None):
        """One-step (sample_steps=1) or multistep sampling; returns (x0, log)."""
        if mask_cfg is not None:
            raise ValueError("mask_cfg is not supported")
        if w_cg != 0.0:
            raise ValueError("consistency trajectory models do not support classifier guidance (w_cg must be 0)")
        if chaining_times is not None:
            sample_steps = len(chaining_times)
        with self.sampling_context(requires_grad, prior, n_samples):
            solver, prior, net, cond_emb, _ = self._prepare_sampling(
                prior, n_samples, solver, sample_steps, condition_cfg, w_cfg, None, 0.0, use_ema, self.bins,
                guidance=False, temperature=temperature)
            levels, renoise, clip_at = self._levels(solver, sample_steps, chaining_times)
            return jump_sample(self, prior, net, cond_emb, w_cfg, levels, renoise, temperature, x_T,
                               preserve_history, clip_at)

    def _levels(self, solver: str, sample_steps: int, chaining_times):
        """(alphas, (t, s) pairs, noise coordinates), re-noise scales and where to clip, per sampler setting."""
        def build():
            smin = self.sigma_min
            if solver == "chain":
                taus = self.chaining_sigmas(sample_steps, chaining_times)
                pairs = [(t, smin) for t in taus]
                renoise = [taus[0]] + [math.sqrt(t * t - smin * smin) for t in taus[1:]]
            else:
                idx = np.unique(np.round(np.linspace(0, self.bins, sample_steps + 1))).astype(int)
                sig = [float(self.grid[i]) for i in idx]
                pairs = list(zip(sig[:-1], sig[1:]))
                renoise = [sig[0]] + [0.0] * (len(pairs) - 1)
            levels = ([1.0] * len(pairs), pairs, [(0.25 * math.log(t), 0.25 * math.log(s)) for t, s in pairs])
            return levels, renoise, [s == smin for _, s in pairs]
        key = None if chaining_times is None else tuple(chaining_times)
        return self.memo(("levels", solver, sample_steps, key), build)

    def hparams(self):
        return {"sigma_data": self.sigma_data, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "bins": self.bins}
