"""Diffusion-QL (Wang, Hunt, Zhou; ICLR 2023): a diffusion policy trained by BC + Q maximisation.

Networks: the actor pi_theta(a | s) is a DiscreteDiffusionSDE over actions in [-1, 1] (T = 5 steps,
eps-prediction, DQLMlp: 3 x 256 Mish layers on [a_t, time embedding, s]); the critic is a twin
Q1, Q2 (`DQLCritic`) with a Polyak-averaged target copy; the actor has an EMA copy (the "target
actor").

One update on a batch (s, a, r, s', done), in the order of the public implementation:

    critic:  y = r + gamma (1 - done) min(Q1', Q2')(s', a'),   a' ~ pi_EMA(. | s')  (no gradient)
             max_q_backup: a'_1..a'_10 ~ pi_EMA(. | s'), y uses min( max_k Q1'(s', a'_k), max_k Q2'(s', a'_k) )
             L_critic = (Q1(s, a) - y)^2 + (Q2(s, a) - y)^2 (batch means), grad-norm clipped
    actor:   L_BC = || eps - eps_theta(alpha_t a + sigma_t eps, t, s) ||^2         (DDPM loss)
             a_theta = the T-step DDPM sampler run WITH gradients through every step (reparameterised)
             L_Q  = -Q_i(s, a_theta) / mean|Q_j(s, a_theta)|.detach(),  (i, j) = (1, 2) or (2, 1) at random
             L_actor = L_BC + eta * L_Q, grad-norm clipped
    EMA:     before `ema_start` updates the EMA actor is a copy of the actor; after it, every
             `ema_every` updates, ema <- 0.995 ema + 0.005 actor
    target:  Q' <- (1 - tau) Q' + tau Q  every update (tau = 0.005)
    lr:      optional cosine decay from lr to 0 over the run's `steps` (the public code's --lr_decay,
             used for its locomotion results), recomputed from the update count (no scheduler state)

Acting (`DQLAgent.act`): `num_candidates` (50) actions are drawn per observation in one batched call
and one is kept with probability softmax(weight_temperature * min(Q1', Q2')(s, a)) (torch.multinomial).
This resampling is part of the published evaluation (it was undocumented in the public code, issue
#3); `num_candidates=1` turns it off and returns the policy's own sample.

The noise schedule: Diffusion-QL's "vp" schedule beta_i = 1 - exp(-0.1/T - 4.95 (2i - 1)/T^2) has
alpha_bar_i = prod_{k<=i} (1 - beta_k) = exp(-0.1 (i/T) - 4.95 (i/T)^2), which is exactly this library's
VP "linear" schedule (log alpha_t = -(b1 - b0)/4 t^2 - b0/2 t) with b0 = 0.1, b1 = 10 at the grid
times t_i = i / T that DiscreteDiffusionSDE trains and samples on (`DQL_VP_SCHEDULE`). The DDPM
sampler's last step returns the clipped x0 prediction, as DQL's posterior with alpha_bar_0 = 1 does.

Per-task settings of the paper (eta, grad norm): halfcheetah medium / medium-replay / medium-expert
1.0 (9 / 2 / 7); hopper 1.0 (9 / 4 / 5); walker2d 1.0 (1 / 4 / 5); antmaze 0.5-4.5 with max_q_backup;
kitchen 0.005. Defaults here are halfcheetah-medium's.

`twin_critic_update`, `policy_q_loss` and `polyak_update` are shared with EDP (edp.py), which differs
only in how the action fed to the Q loss is obtained.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion import DiscreteDiffusionSDE
from ..diffusion.sampling import solver_nfe
from ..nn_condition import IdentityCondition
from ..nn_diffusion import DQLMlp
from ..utils import DQLCritic
from .base import Agent, check_keys, check_number, cosine_decay, init_keys, polyak_update, seeded
from .base import obs_state as _state

__all__ = ["DQL_VP_SCHEDULE", "DQLAgent", "make_dql_actor", "policy_q_loss", "twin_critic_update"]

#: Diffusion-QL's "vp" beta schedule as a VP "linear" schedule (exact at t_i = i / T, see module doc)
DQL_VP_SCHEDULE = {"beta0": 0.1, "beta1": 10.0}


def _clip(params, max_norm: float | None) -> torch.Tensor:
    """Clip the gradient norm to max_norm (None: no clipping); returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    return nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"), foreach=True)


# ---------------------------------------------------------------------------- shared with EDP
def twin_critic_update(critic: DQLCritic, critic_target: DQLCritic, optimizer: torch.optim.Optimizer,
                       obs: torch.Tensor, act: torch.Tensor, rew: torch.Tensor, tml: torch.Tensor,
                       next_obs: torch.Tensor, next_actions: Callable[[torch.Tensor], torch.Tensor], *,
                       discount: float, backup_samples: int = 1, grad_norm: float | None = None) -> dict:
    """One TD step of the twin critic; returns detached tensors {"critic_loss", "q_mean", "target_q",
    "critic_grad_norm"}.

    next_actions(next_obs_rows) draws one action per row from the (EMA) policy. backup_samples = 1:
    y = r + discount (1 - tml) min(Q1', Q2')(s', a'). backup_samples = K > 1 (max-Q backup): K actions
    per s', each head takes its max over them, then the min of the two maxima.
    """
    b = obs.shape[0]
    with torch.no_grad():
        rows = next_obs.repeat_interleave(backup_samples, dim=0) if backup_samples > 1 else next_obs
        q1_next, q2_next = critic_target(rows, next_actions(rows))
        if backup_samples > 1:
            q1_next = q1_next.view(b, backup_samples).amax(dim=1, keepdim=True)
            q2_next = q2_next.view(b, backup_samples).amax(dim=1, keepdim=True)
        y = rew + discount * (1.0 - tml) * torch.minimum(q1_next, q2_next)
    q1, q2 = critic(obs, act)
    loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gn = _clip(critic.parameters(), grad_norm)
    optimizer.step()
    return {"critic_loss": loss.detach(), "q_mean": q1.detach().mean(), "target_q": y.mean(),
            "critic_grad_norm": gn.detach()}


def policy_q_loss(critic: DQLCritic, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """-Q_i(s, a) / mean|Q_j(s, a)| with the denominator detached and (i, j) = (1, 2) or (2, 1) at
    random (Diffusion-QL's scale-free policy-improvement term); gradients flow into `actions` only
    when the critic's parameters are frozen by the caller."""
    q1, q2 = critic(obs, actions)
    if torch.rand(()) < 0.5:
        q1, q2 = q2, q1
    return -q1.mean() / q2.abs().mean().detach()


# ---------------------------------------------------------------------------- the actor
def make_dql_actor(obs_dim: int, act_dim: int, *, diffusion_steps: int = 5, emb_dim: int = 16,
                   hidden_dim: int = 256, timestep_emb_type: str = "positional", ema_rate: float = 0.995,
                   lr: float = 3e-4, noise_schedule: str = "linear", noise_schedule_params: dict | None = None,
                   predict_noise: bool = True, device: str | torch.device = "cpu",
                   precision: str = "auto") -> DiscreteDiffusionSDE:
    """Diffusion-QL's actor: DQLMlp conditioned on the raw (normalized) observation (IdentityCondition,
    no condition dropout) inside a DiscreteDiffusionSDE, actions bounded to [-1, 1].

    noise_schedule_params=None with noise_schedule="linear" gives DQL's vp schedule (DQL_VP_SCHEDULE).
    The optimizer is Adam (AdamW with weight_decay 0), as in the paper. EMA is driven by the agent
    (ema_warmup off): the agent's ema_start / ema_every decide when `ema_rate` applies.
    """
    for name, v in (("diffusion_steps", diffusion_steps), ("emb_dim", emb_dim), ("hidden_dim", hidden_dim)):
        check_number(f"actor_params.{name}", v, 1, integer=True)
    check_number("actor_params.lr", lr, 0.0, lo_open=True)
    if noise_schedule == "linear" and noise_schedule_params is None:
        noise_schedule_params = dict(DQL_VP_SCHEDULE)
    net = DQLMlp(obs_dim, act_dim, emb_dim=emb_dim, hidden_dim=hidden_dim, timestep_emb_type=timestep_emb_type)
    return DiscreteDiffusionSDE(
        net, IdentityCondition(dropout=0.0), diffusion_steps=diffusion_steps, ema_rate=ema_rate,
        optim_params={"lr": lr, "weight_decay": 0.0}, noise_schedule=noise_schedule,
        noise_schedule_params=noise_schedule_params, predict_noise=predict_noise,
        x_max=torch.ones(1, act_dim), x_min=-torch.ones(1, act_dim), device=device, precision=precision,
        ema_warmup=False)


# ---------------------------------------------------------------------------- the agent
class DQLAgent(Agent):
    """Diffusion-QL. See the module docstring for the losses.

    Args:
        actor: a DiscreteDiffusionSDE over actions (B, act_dim) conditioned on obs (B, obs_dim)
            (make_dql_actor); its own optimizer and EMA copy are used, its update() is not.
        critic: a DQLCritic; the agent makes its target copy and Adam optimizer.
        steps: the run's total updates (the cosine lr decay's horizon).
        eta: weight of the Q term in the actor loss.
        grad_norm: max gradient norm of actor and critic (None or 0: no clipping).
        discount, tau: TD discount and Polyak rate of the target critic.
        critic_lr: Adam learning rate of the critic.
        lr_decay: cosine-decay both learning rates to 0 over `steps`.
        max_q_backup, backup_samples: max-Q backup with this many next actions (antmaze).
        ema_start, ema_every: the EMA actor copies the actor before `ema_start` updates and then moves
            every `ema_every` updates with the actor's ema_rate.
        num_candidates: actions drawn per observation in act(); 1 = no resampling.
        weight_temperature: act() keeps a candidate with probability softmax(weight_temperature * Q).
        temperature: scale of the sampler's initial noise in act().
        act_ema: act with the EMA actor (True) or the online actor (the public code's choice).
        solver, sample_steps: the sampler of act() and of the target actions (None: diffusion_steps).
    """

    name = "dql"

    def __init__(self, actor: DiscreteDiffusionSDE, critic: DQLCritic, steps: int = 1, *, eta: float = 1.0,
                 grad_norm: float | None = 9.0, discount: float = 0.99, tau: float = 0.005,
                 critic_lr: float = 3e-4, lr_decay: bool = False, max_q_backup: bool = False,
                 backup_samples: int = 10, ema_start: int = 1000, ema_every: int = 5, num_candidates: int = 50,
                 weight_temperature: float = 1.0, temperature: float = 1.0, act_ema: bool = True,
                 solver: str = "ddpm", sample_steps: int | None = None):
        check_number("steps", steps, 1, integer=True)
        check_number("eta", eta, 0.0)
        if grad_norm is not None:
            check_number("grad_norm", grad_norm, 0.0)
        check_number("discount", discount, 0.0, 1.0)
        check_number("tau", tau, 0.0, 1.0, lo_open=True)
        check_number("critic_lr", critic_lr, 0.0, lo_open=True)
        check_number("backup_samples", backup_samples, 1, integer=True)
        check_number("ema_start", ema_start, 0, integer=True)
        check_number("ema_every", ema_every, 1, integer=True)
        check_number("num_candidates", num_candidates, 1, integer=True)
        check_number("weight_temperature", weight_temperature, 0.0)
        check_number("temperature", temperature, 0.0)
        for name, v in (("lr_decay", lr_decay), ("max_q_backup", max_q_backup), ("act_ema", act_ema)):
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be true or false, got {v!r}")  # noqa: TRY004 (a config value)
        if solver not in actor.solvers:
            raise ValueError(f"solver={solver!r} is not one of {actor.solvers}")
        sample_steps = actor.diffusion_steps if sample_steps is None else sample_steps
        check_number("sample_steps", sample_steps, 1, actor.diffusion_steps, integer=True)

        if actor.x_max is None or actor.x_min is None:
            raise ValueError("the actor must bound its actions (x_min / x_max), e.g. make_dql_actor's [-1, 1]")
        self.actor, self.device = actor, actor.device
        self.act_dim = actor.x_max.shape[-1]
        self.obs_dim = critic.q1[0].in_features - self.act_dim  # DQLCritic sees [obs, act]
        if actor.x_shape is None:
            actor.x_shape = (self.act_dim,)
        self.critic = critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False).eval()
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=critic_lr, fused=True)  # one kernel
        self.steps, self.eta, self.grad_norm = steps, eta, grad_norm or None
        self.discount, self.tau, self.lr_decay = discount, tau, lr_decay
        self.base_lrs = (actor.optimizer.param_groups[0]["lr"], critic_lr)
        self.backup_samples = backup_samples if max_q_backup else 1
        self.max_q_backup = max_q_backup
        self.ema_start, self.ema_every = ema_start, ema_every
        self.num_candidates, self.weight_temperature = num_candidates, weight_temperature
        self.temperature, self.act_ema = temperature, act_ema
        self.solver, self.sample_steps = solver, sample_steps
        self.updates = 0

    # ------------------------------------------------------------------ construction from a config
    #: defaults of the actor (make_dql_actor keywords) that a subclass changes
    actor_defaults: ClassVar[dict] = {}

    @classmethod
    def from_config(cls, obs_dim: int, act_dim: int, cfg: Mapping, steps: int,
                    device: str | torch.device = "cpu", precision: str = "auto") -> DQLAgent:
        """Build from the `agent` section of configs/<name>.yaml: agent settings (DQLAgent's keywords),
        `critic: {hidden_dim, lr}` and `actor_params:` (make_dql_actor's keywords). Unknown keys and
        bad values raise ValueError."""
        cfg = dict(cfg)
        check_keys("agent", cfg, init_keys(DQLAgent.__init__, ("actor", "critic", "steps", "critic_lr"))
                   | {"critic", "actor_params"})
        critic_cfg = dict(cfg.pop("critic", None) or {})
        check_keys("agent.critic", critic_cfg, ("hidden_dim", "lr"))
        actor_cfg = {**cls.actor_defaults, **(cfg.pop("actor_params", None) or {})}
        check_keys("agent.actor_params", actor_cfg, init_keys(make_dql_actor, ("obs_dim", "act_dim", "device",
                                                                               "precision")))
        hidden = critic_cfg.get("hidden_dim", 256)
        check_number("critic.hidden_dim", hidden, 1, integer=True)
        actor = make_dql_actor(obs_dim, act_dim, device=device, precision=precision, **actor_cfg)
        return cls(actor, DQLCritic(obs_dim, act_dim, hidden), steps,
                   critic_lr=critic_cfg.get("lr", 3e-4), **cfg)

    # ------------------------------------------------------------------ checkpointing
    def parts(self) -> dict:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                "critic_optim": self.critic_optim}

    def extra_state(self) -> dict:
        return {"updates": self.updates}

    def load_extra_state(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))

    def train(self, mode: bool = True) -> DQLAgent:
        super().train(mode)
        self.critic_target.eval()
        return self

    def nfe(self) -> int:
        """Actor network evaluations per act() (all candidates are drawn in one batch)."""
        return solver_nfe(self.solver, self.sample_steps)

    # ------------------------------------------------------------------ sampling
    def sample_actions(self, obs: torch.Tensor, use_ema: bool = True, temperature: float = 1.0,
                       requires_grad: bool = False) -> torch.Tensor:
        """One action per row of obs with the agent's solver / sample_steps."""
        prior = torch.zeros(obs.shape[0], self.act_dim, device=self.device)
        act, _ = self.actor.sample(prior, solver=self.solver, n_samples=obs.shape[0],
                                   sample_steps=self.sample_steps, use_ema=use_ema, temperature=temperature,
                                   condition_cfg=obs, requires_grad=requires_grad)
        return act

    def policy_actions(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(BC loss, actions for the Q term). Diffusion-QL: the DDPM loss on the dataset actions, and
        actions sampled by the full reverse chain of the online actor with gradients through it."""
        cond = self.actor.encode_condition(self.actor.model, obs)
        bc, _ = self.actor.loss(act, cond)
        return bc, self.sample_actions(obs, use_ema=False, requires_grad=True)

    # ------------------------------------------------------------------ training
    def _set_lr(self) -> float:
        """Cosine decay from the base rates to 0 over `steps` (or constant); returns the factor."""
        factor = cosine_decay(self.updates, self.steps) if self.lr_decay else 1.0
        for group in self.actor.optimizer.param_groups:
            group["lr"] = self.base_lrs[0] * factor
        for group in self.critic_optim.param_groups:
            group["lr"] = self.base_lrs[1] * factor
        return factor

    @torch.no_grad()
    def _ema_step(self) -> None:
        actor = self.actor
        if self.updates < self.ema_start:
            torch._foreach_copy_(list(actor.model_ema.parameters()), list(actor.model.parameters()))
        elif self.updates % self.ema_every == 0:
            actor.ema_update()

    def update(self, batch: Mapping) -> dict:
        """One critic step, one actor step, EMA and target updates. Returns {"critic_loss", "bc_loss",
        "q_loss" (the normalised Q term), "actor_loss", "q_mean", "target_q", "actor_grad_norm",
        "critic_grad_norm", "lr"}."""
        obs = _state(batch["obs"]).to(self.device, torch.float32)
        next_obs = _state(batch["next_obs"]).to(self.device, torch.float32)
        act, rew, tml = (batch[k].to(self.device, torch.float32) for k in ("act", "rew", "tml"))
        lr_factor = self._set_lr()

        # critic (fp32: TD targets of size ~1/(1 - gamma) need the mantissa)
        def next_actions(rows):
            with self.actor.autocast():
                return self.sample_actions(rows, use_ema=True).float()

        out = twin_critic_update(self.critic, self.critic_target, self.critic_optim, obs, act, rew, tml,
                                 next_obs, next_actions, discount=self.discount,
                                 backup_samples=self.backup_samples, grad_norm=self.grad_norm)

        # actor: BC + eta * normalised Q of the policy's own actions (critic frozen for this step)
        self.critic.requires_grad_(False)
        try:
            with self.actor.autocast():
                bc_loss, new_act = self.policy_actions(obs, act)
            q_loss = policy_q_loss(self.critic, obs, new_act.float())
        finally:
            self.critic.requires_grad_(True)
        actor_loss = bc_loss.float() + self.eta * q_loss
        self.actor.optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        gn = _clip(self.actor.model.parameters(), self.grad_norm)
        self.actor.optimizer.step()
        self.actor.optimizer.zero_grad(set_to_none=True)
        self._ema_step()
        self.actor.step += 1
        polyak_update(self.critic_target, self.critic, self.tau)
        self.updates += 1

        out.update(bc_loss=bc_loss.detach(), q_loss=q_loss.detach(), actor_loss=actor_loss.detach(),
                   actor_grad_norm=gn.detach())
        names = list(out)
        values = torch.stack([out[k].float().reshape(()) for k in names]).tolist()  # one device sync
        return {**dict(zip(names, values)), "lr": self.base_lrs[0] * lr_factor}

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions (B, act_dim) in [-1, 1] for normalized observations (B, obs_dim).

        All B * num_candidates candidates (rows b*N .. b*N+N-1 belong to observation b) are drawn in one
        sampler call; with N > 1 one per observation is kept with probability
        softmax(weight_temperature * min(Q1', Q2')(s, a)) over its N candidates (target critic).
        `generator` seeds every random draw of the call (noise and the choice), so equal generators
        give equal actions.
        """
        obs = _state(obs)
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be (B, {self.obs_dim}), got shape {tuple(obs.shape)}")
        obs = obs.to(self.device, torch.float32)
        b, n = obs.shape[0], self.num_candidates
        with seeded(generator, self.device):
            rows = obs.repeat_interleave(n, dim=0) if n > 1 else obs
            cand = self.sample_actions(rows, use_ema=self.act_ema, temperature=self.temperature)
            if n == 1:
                return cand
            q = torch.minimum(*self.critic_target(rows, cand)).view(b, n)
            idx = torch.multinomial(torch.softmax(self.weight_temperature * q, dim=1), 1).squeeze(1)
        return cand.view(b, n, self.act_dim)[torch.arange(b, device=cand.device), idx]
