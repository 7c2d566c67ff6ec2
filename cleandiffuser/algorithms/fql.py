"""Flow Q-learning (FQL; Park, Li, Levine, ICML 2025, arXiv 2502.02538): a one-step policy that maximises Q
while it is distilled from a flow-matching behaviour policy, with no gradient through the flow's steps.

Networks: the behaviour flow v_theta(s, x_t, t) is this library's `ContinuousRectifiedFlow` over actions
(x_t = (1 - t) a + t z, velocity z - a; DQLMlp: 3 x hidden Mish layers on [x_t, time embedding, s]); the
one-step policy mu_omega(s, z) is an MLP on [s, z]; the critic is a twin Q (`DQLCritic`) with a Polyak target.

One update on a batch (s, a, r, s', done); every loss is computed from the parameters before the step, as in
the paper's single joint gradient step:

    critic:   y = r + gamma (1 - done) agg(Q1', Q2')(s', clip(mu_omega(s', z')))   agg = mean (paper) or min
              L_critic = (Q1(s, a) - y)^2 + (Q2(s, a) - y)^2
    flow BC:  L_flow = || v_theta(s, (1 - t) a + t z, t) - (z - a) ||^2,   t ~ U(0, 1), z ~ N(0, I)
    one-step: a_flow = the flow's Euler solution from z over `flow_steps` steps (no gradient),
              L_distill = || mu_omega(s, z) - a_flow ||^2
              L_q = -mean((Q1 + Q2) / 2)(s, clip(mu_omega(s, z)))  (critic frozen), divided by the batch's
              mean |Q| (detached) when normalize_q_loss
              L_actor = L_flow + alpha L_distill + L_q
    target:   Q' <- (1 - tau) Q' + tau Q

alpha is the one hyperparameter tuned per task (the paper tunes it per benchmark from 0.03 .. 1000).
Acting: a = clip(mu_omega(s, z)), z ~ N(0, temperature^2 I): one network evaluation. With num_candidates > 1
the candidate of highest mean Q (target critic) is kept.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion import ContinuousRectifiedFlow
from ..nn_condition import IdentityCondition
from ..nn_diffusion import DQLMlp
from ..utils import DQLCritic
from ..utils.activations import Mish
from .base import Agent, check_keys, check_number, init_keys, polyak_update, seeded
from .base import obs_state as _state

__all__ = ["FQLAgent", "OneStepPolicy", "make_flow_actor"]

Q_AGGREGATIONS = ("mean", "min")


class OneStepPolicy(nn.Module):
    """mu(s, z): an MLP of `layers` x hidden Mish layers on [s, z] -> action (unclipped)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256, layers: int = 3):
        super().__init__()
        dims = [obs_dim + act_dim] + [hidden_dim] * layers
        body = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(d_in, d_out), Mish()]
        self.net = nn.Sequential(*body, nn.Linear(dims[-1], act_dim))

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, noise], dim=-1))


def make_flow_actor(obs_dim: int, act_dim: int, *, emb_dim: int = 16, hidden_dim: int = 256,
                    timestep_emb_type: str = "positional", lr: float = 3e-4, ema_rate: float = 0.995,
                    device: str | torch.device = "cpu", precision: str = "fp32") -> ContinuousRectifiedFlow:
    """FQL's behaviour policy: a rectified flow over actions in [-1, 1] conditioned on the observation
    (DQLMlp, no condition dropout), Adam (AdamW with weight decay 0) as in the paper."""
    check_number("flow_params.hidden_dim", hidden_dim, 1, integer=True)
    check_number("flow_params.emb_dim", emb_dim, 2, integer=True)
    check_number("flow_params.lr", lr, 0.0, lo_open=True)
    net = DQLMlp(obs_dim, act_dim, emb_dim=emb_dim, hidden_dim=hidden_dim, timestep_emb_type=timestep_emb_type)
    return ContinuousRectifiedFlow(net, IdentityCondition(dropout=0.0), ema_rate=ema_rate,
                                   optim_params={"lr": lr, "weight_decay": 0.0}, x_max=torch.ones(1, act_dim),
                                   x_min=-torch.ones(1, act_dim), device=device, precision=precision,
                                   ema_warmup=False)


class FQLAgent(Agent):
    """Flow Q-learning. See the module docstring for the losses.

    Args:
        flow: the behaviour flow (make_flow_actor); its optimizer is used, its update() is not.
        policy: the one-step policy mu(s, z) (OneStepPolicy).
        critic: a DQLCritic; the agent makes its target copy and Adam optimizer.
        alpha: weight of the distillation loss (the paper's one per-task hyperparameter).
        flow_steps: Euler steps of the flow's distillation target.
        normalize_q_loss: divide the Q term by the batch's mean |Q| (makes alpha independent of the reward scale).
        q_agg: how the target combines the twin heads: "mean" (the paper's default) or "min".
        discount, tau: TD discount and Polyak rate of the target critic.
        lr: Adam learning rate of the one-step policy and the critic (the flow has its own).
        num_candidates: actions drawn per observation in act(); the highest mean target Q is kept (1: off).
        temperature: scale of the one-step policy's input noise in act().
    """

    name = "fql"

    def __init__(self, flow: ContinuousRectifiedFlow, policy: OneStepPolicy, critic: DQLCritic, *,
                 alpha: float = 10.0, flow_steps: int = 10, normalize_q_loss: bool = True, q_agg: str = "mean",
                 discount: float = 0.99, tau: float = 0.005, lr: float = 3e-4, num_candidates: int = 1,
                 temperature: float = 1.0):
        check_number("alpha", alpha, 0.0)
        check_number("flow_steps", flow_steps, 1, integer=True)
        check_number("discount", discount, 0.0, 1.0)
        check_number("tau", tau, 0.0, 1.0, lo_open=True)
        check_number("lr", lr, 0.0, lo_open=True)
        check_number("num_candidates", num_candidates, 1, integer=True)
        check_number("temperature", temperature, 0.0)
        if not isinstance(normalize_q_loss, bool):
            raise ValueError(f"normalize_q_loss must be true or false, got {normalize_q_loss!r}")  # noqa: TRY004
        if q_agg not in Q_AGGREGATIONS:
            raise ValueError(f"q_agg={q_agg!r} is not one of {Q_AGGREGATIONS}")
        self.flow, self.device = flow, flow.device
        self.act_dim = flow.x_max.shape[-1]
        self.obs_dim = critic.q1[0].in_features - self.act_dim  # DQLCritic sees [obs, act]
        if flow.x_shape is None:
            flow.x_shape = (self.act_dim,)
        self.policy = policy.to(self.device)
        self.policy_optim = torch.optim.Adam(self.policy.parameters(), lr=lr, fused=True)  # one kernel
        self.critic = critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False).eval()
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=lr, fused=True)
        self.alpha, self.flow_steps, self.normalize_q_loss, self.q_agg = alpha, flow_steps, normalize_q_loss, q_agg
        self.discount, self.tau = discount, tau
        self.num_candidates, self.temperature = num_candidates, temperature
        self.updates = 0
        self.compiled = False

    @classmethod
    def from_config(cls, obs_dim: int, act_dim: int, cfg: Mapping, steps: int,
                    device: str | torch.device = "cpu") -> FQLAgent:
        """Build from the `agent` section of configs/fql.yaml: the agent's keywords, `policy: {hidden_dim,
        layers}`, `critic: {hidden_dim}` and `flow_params:` (make_flow_actor's keywords)."""
        cfg = dict(cfg)
        check_keys("agent", cfg, init_keys(FQLAgent.__init__, ("flow", "policy", "critic"))
                   | {"policy", "critic", "flow_params"})
        policy_cfg = dict(cfg.pop("policy", None) or {})
        check_keys("agent.policy", policy_cfg, ("hidden_dim", "layers"))
        for key, value in policy_cfg.items():
            check_number(f"agent.policy.{key}", value, 1, integer=True)
        critic_cfg = dict(cfg.pop("critic", None) or {})
        check_keys("agent.critic", critic_cfg, ("hidden_dim",))
        hidden = critic_cfg.get("hidden_dim", 256)
        check_number("agent.critic.hidden_dim", hidden, 1, integer=True)
        flow_cfg = dict(cfg.pop("flow_params", None) or {})
        check_keys("agent.flow_params", flow_cfg, init_keys(make_flow_actor, ("obs_dim", "act_dim", "device")))
        flow = make_flow_actor(obs_dim, act_dim, device=device, **flow_cfg)
        return cls(flow, OneStepPolicy(obs_dim, act_dim, **policy_cfg), DQLCritic(obs_dim, act_dim, hidden), **cfg)

    # ------------------------------------------------------------------ checkpointing
    def parts(self) -> dict:
        return {"flow": self.flow, "policy": self.policy, "policy_optim": self.policy_optim, "critic": self.critic,
                "critic_target": self.critic_target, "critic_optim": self.critic_optim}

    def extra_state(self) -> dict:
        return {"updates": self.updates}

    def load_extra_state(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))

    def train(self, mode: bool = True) -> FQLAgent:
        super().train(mode)
        self.critic_target.eval()
        return self

    def nfe(self) -> int:
        """Network evaluations per act(): the one-step policy, once."""
        return 1

    # ------------------------------------------------------------------ the two policies
    def policy_actions(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """clip(mu(s, z)) in [-1, 1]; z ~ N(0, I) unless given."""
        noise = torch.randn(obs.shape[0], self.act_dim, device=self.device) if noise is None else noise
        return self.policy(obs, noise).clamp(-1.0, 1.0)

    @torch.no_grad()
    def flow_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The behaviour flow's action for each (s, z): Euler over `flow_steps` steps of the velocity from z
        (t = 1) to t = 0 with the online weights, clipped to [-1, 1] at the end (the paper's target)."""
        net = self.flow.model["diffusion"]
        cond = self.flow.encode_condition(self.flow.model, obs)
        x, dt = noise, 1.0 / self.flow_steps
        for i in range(self.flow_steps):
            t = torch.full((x.shape[0],), 1.0 - i * dt, device=x.device)
            x = x - dt * net(x, t, cond).float()
        return x.clamp(-1.0, 1.0)

    def _q(self, critic: DQLCritic, obs: torch.Tensor, act: torch.Tensor, agg: str,
           params: dict | None = None) -> torch.Tensor:
        """The twin heads combined by `agg`; `params` evaluates the critic with those tensors in place of its own."""
        q1, q2 = critic(obs, act) if params is None else torch.func.functional_call(critic, params, (obs, act))
        return (q1 + q2) / 2 if agg == "mean" else torch.minimum(q1, q2)

    # ------------------------------------------------------------------ training
    def compile_network(self) -> FQLAgent:
        """Compile the whole loss computation (critic, flow, distillation and Q terms) as one graph: fuses
        the Mish layers and the flow's Euler steps. The noise is drawn outside, so eager and compiled runs
        draw the same numbers."""
        if not self.compiled:
            self.losses = torch.compile(self.losses, dynamic=False)
            self.compiled = True
        return self

    def losses(self, obs, act, rew, tml, next_obs, next_noise, noise, flow_source, flow_times) -> dict:
        """Every loss of one update from the current parameters (see the module docstring); the noises are
        inputs: next_noise / noise for the one-step policy at s' / s, flow_source and flow_times for the
        flow-matching loss."""
        with torch.no_grad():
            y = rew + self.discount * (1.0 - tml) * self._q(self.critic_target, next_obs,
                                                              self.policy_actions(next_obs, next_noise), self.q_agg)
        q1, q2 = self.critic(obs, act)
        critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)

        with self.flow.autocast():
            flow_loss, _ = self.flow.loss(act, self.flow.encode_condition(self.flow.model, obs),
                                          source=flow_source, times=flow_times)
        target = self.flow_actions(obs, noise)
        raw = self.policy(obs, noise)
        distill_loss = F.mse_loss(raw, target)
        frozen = {k: v.detach() for k, v in self.critic.named_parameters()}  # the Q term moves the policy only
        q = self._q(self.critic, obs, raw.clamp(-1.0, 1.0), "mean", frozen)
        q_loss = -q.mean()
        if self.normalize_q_loss:
            q_loss = q_loss / q.abs().mean().detach().clamp_min(1e-6)
        loss = critic_loss + flow_loss.float() + self.alpha * distill_loss + q_loss
        return {"loss": loss, "critic_loss": critic_loss, "flow_loss": flow_loss, "distill_loss": distill_loss,
                "q_loss": q_loss, "q_mean": q1.mean(), "target_q": y.mean()}

    def update(self, batch: Mapping) -> dict:
        """One joint step of critic, flow and one-step policy, then the target update. Returns {"critic_loss",
        "flow_loss", "distill_loss", "q_loss", "q_mean", "target_q"}."""
        obs = _state(batch["obs"]).to(self.device, torch.float32)
        next_obs = _state(batch["next_obs"]).to(self.device, torch.float32)
        act, rew, tml = (batch[k].to(self.device, torch.float32) for k in ("act", "rew", "tml"))
        next_noise, noise, flow_source = (torch.randn_like(act) for _ in range(3))
        flow_times = self.flow.sample_times(act.shape[0])
        out = self.losses(obs, act, rew, tml, next_obs, next_noise, noise, flow_source, flow_times)

        optimizers = (self.critic_optim, self.flow.optimizer, self.policy_optim)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        out.pop("loss").backward()
        for opt in optimizers:
            opt.step()
        self.flow.ema_update()
        self.flow.step += 1
        polyak_update(self.critic_target, self.critic, self.tau)
        self.updates += 1
        values = torch.stack([v.detach().float().reshape(()) for v in out.values()]).tolist()  # one device sync
        return dict(zip(out, values))

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions (B, act_dim) in [-1, 1] for normalized observations (B, obs_dim); `generator` seeds the
        noise, so equal generators give equal actions."""
        obs = _state(obs)
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be (B, {self.obs_dim}), got shape {tuple(obs.shape)}")
        obs = obs.to(self.device, torch.float32)
        b, n = obs.shape[0], self.num_candidates
        with seeded(generator, self.device):
            rows = obs.repeat_interleave(n, dim=0) if n > 1 else obs
            noise = torch.randn(rows.shape[0], self.act_dim, device=self.device) * self.temperature
            cand = self.policy_actions(rows, noise)
        if n == 1:
            return cand
        q = self._q(self.critic_target, rows, cand, "mean").view(b, n)
        return cand.view(b, n, self.act_dim)[torch.arange(b, device=cand.device), q.argmax(dim=1)]
