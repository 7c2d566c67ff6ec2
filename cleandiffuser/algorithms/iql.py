"""Implicit Q-learning (Kostrikov et al. 2022): its critic, also the critic half of IDQL (Hansen-Estruch et
al. 2023), and the full algorithm (`IQLAgent`: the critic plus an advantage-weighted Gaussian policy).

One update on a batch of transitions (s, a, r, s', done):

    V:  L_V = E[ |expectile - 1(u < 0)| u^2 ],   u = Q_target(s, a) - V(s)     (expectile regression)
    Q:  L_Q = E[ (Q1(s, a) - y)^2 + (Q2(s, a) - y)^2 ],   y = r + discount (1 - done) V(s')
    target:  Q_target <- (1 - tau) Q_target + tau Q          (Polyak averaging, tau small)

Q_target(s, a) is the minimum of the target network's twin heads. No policy is involved: V learns an
upper expectile of Q over the *dataset's* actions, so no out-of-distribution action is ever queried.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from ..serialization import (
    flatten_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from ..utils.iql_networks import IDQLQNet, IDQLVNet
from .base import Agent, check_keys, check_number, cosine_decay, init_keys, polyak_update
from .base import obs_state as _state

__all__ = ["GaussianActor", "IQLAgent", "IQLCritic", "expectile_loss"]


def expectile_loss(u: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|expectile - 1(u < 0)| u^2): minimised over a constant c by the expectile of Q when
    u = Q - c (expectile 0.5 gives the mean, expectile -> 1 the maximum)."""
    weight = torch.abs(expectile - (u < 0).float())
    return (weight * u.pow(2)).mean()


class IQLCritic:
    """Twin Q(s, a), its Polyak-averaged target copy and V(s), trained with IQL's losses.

    Args:
        obs_dim, act_dim, hidden_dim: sizes of IDQLQNet / IDQLVNet.
        expectile: tau of the expectile regression of V (0.5 = mean of Q, 0.7 IDQL's default).
        discount: gamma of the TD target.
        tau: Polyak rate; each update moves the target a fraction `tau` toward the online Q.
        lr: Adam learning rate of both Q and V.

    Batches use the item structure of D4RLMuJoCoTDDataset: {"obs": {"state"}, "next_obs": {"state"},
    "act", "rew", "tml"} (plain tensors for "obs"/"next_obs" are accepted too); rew, tml: (B, 1).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256, expectile: float = 0.7,
                 discount: float = 0.99, tau: float = 0.005, lr: float = 3e-4,
                 device: str | torch.device = "cpu"):
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"expectile must be in (0, 1), got {expectile}")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        self.obs_dim, self.act_dim, self.hidden_dim = obs_dim, act_dim, hidden_dim
        self.expectile, self.discount, self.tau, self.lr = expectile, discount, tau, lr
        self.device = torch.device(device)
        self.q_net = IDQLQNet(obs_dim, act_dim, hidden_dim).to(self.device)
        self.q_target = copy.deepcopy(self.q_net).requires_grad_(False).eval()
        self.v_net = IDQLVNet(obs_dim, hidden_dim).to(self.device)
        self.q_optim = torch.optim.Adam(self.q_net.parameters(), lr=lr, fused=True)  # one kernel per step
        self.v_optim = torch.optim.Adam(self.v_net.parameters(), lr=lr, fused=True)
        self.step = 0
        self.compiled = False

    def compile_network(self) -> IQLCritic:
        """Compile the two training losses (forward and backward) with TorchInductor. The critic's matmuls
        are small, so per-op overhead dominates its update: compiled, it is ~1.3x faster on 2 CPU cores.
        The first update compiles; q() and v() (evaluation, acting) stay eager."""
        if not self.compiled:
            self._v_loss = torch.compile(self._v_loss, dynamic=False)
            self._q_loss = torch.compile(self._q_loss, dynamic=False)
            self.compiled = True
        return self

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def q(self, obs, act: torch.Tensor, target: bool = True) -> torch.Tensor:
        """min of the twin heads (B, 1); by default of the target network, which V is regressed on
        and IDQL scores candidate actions with (`target=False`: the online network)."""
        net = self.q_target if target else self.q_net
        return net(_state(obs).to(self.device), act.to(self.device))

    @torch.no_grad()
    def v(self, obs) -> torch.Tensor:
        """V(s): (B, 1)."""
        return self.v_net(_state(obs).to(self.device))

    # ------------------------------------------------------------------ training
    def update(self, batch: Mapping) -> dict:
        """One IQL step (V, then Q, then the Polyak target update). Returns {"q_loss", "v_loss"}."""
        obs = _state(batch["obs"]).to(self.device)
        next_obs = _state(batch["next_obs"]).to(self.device)
        act, rew, tml = (batch[k].to(self.device) for k in ("act", "rew", "tml"))

        v_loss = self._v_loss(obs, act)
        self.v_optim.zero_grad(set_to_none=True)
        v_loss.backward()
        self.v_optim.step()

        q_loss = self._q_loss(obs, act, rew, tml, next_obs)  # the TD target uses the V just updated
        self.q_optim.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_optim.step()

        self.update_target()
        self.step += 1
        return {"q_loss": q_loss.item(), "v_loss": v_loss.item()}

    def _v_loss(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """V(s) -> expectile of Q_target(s, a) over the dataset's actions."""
        with torch.no_grad():
            q_target = self.q_target(obs, act)
        return expectile_loss(q_target - self.v_net(obs), self.expectile)

    def _q_loss(self, obs, act, rew, tml, next_obs) -> torch.Tensor:
        """Q(s, a) -> r + gamma (1 - done) V(s'), both heads."""
        with torch.no_grad():
            y = rew + self.discount * (1.0 - tml) * self.v_net(next_obs)
        q1, q2 = self.q_net.both(obs, act)
        return ((q1 - y).pow(2) + (q2 - y).pow(2)).mean()

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- (1 - tau) * target + tau * online  (lerp moves `tau` of the way to online)."""
        polyak_update(self.q_target, self.q_net, self.tau)

    # ------------------------------------------------------------------ persistence
    def hparams(self) -> dict:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden_dim": self.hidden_dim,
                "expectile": self.expectile, "discount": self.discount, "tau": self.tau}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Network weights (q_net., q_target., v_net.) and the step count; tensors only."""
        out = {}
        for name in ("q_net", "q_target", "v_net"):
            out.update({f"{name}.{k}": v for k, v in getattr(self, name).state_dict().items()})
        out["step"] = torch.tensor(self.step, dtype=torch.int64)
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> IQLCritic:
        known = ("q_net", "q_target", "v_net")
        unexpected = [k for k in state if k != "step" and k.split(".", 1)[0] not in known]
        if unexpected:
            raise ValueError(f"unexpected keys in an IQLCritic state: {unexpected}")
        for name in known:
            prefix = name + "."
            getattr(self, name).load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                                 if k.startswith(prefix)})
        self.step = int(state["step"]) if "step" in state else self.step
        return self

    def checkpoint_state(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors under `prefix`, JSON meta): weights, optimizer states, step, hyperparameters."""
        tensors = {prefix + k: v for k, v in self.state_dict().items()}
        meta = {"format": 1, "class": type(self).__name__, "hparams": self.hparams(),
                "q_optim": flatten_state(self.q_optim.state_dict(), prefix + "q_optim", tensors),
                "v_optim": flatten_state(self.v_optim.state_dict(), prefix + "v_optim", tensors)}
        return tensors, meta

    def load_checkpoint_state(self, tensors, meta: dict, prefix: str = "", load_optimizer: bool = True,
                              source: str = "checkpoint") -> IQLCritic:
        """Inverse of checkpoint_state(); the hyperparameters must match."""
        if meta.get("class") != type(self).__name__:
            raise ValueError(f"{source} holds a {meta.get('class')}, not an {type(self).__name__}")
        saved = meta.get("hparams", {})
        mismatched = {k: (v, saved.get(k)) for k, v in self.hparams().items() if saved.get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k}: critic {a!r} vs checkpoint {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"{source} was saved with different settings: {detail}")
        own = {k[len(prefix):]: v.to(self.device) for k, v in tensors.items() if k.startswith(prefix)}
        self.load_state_dict({k: v for k, v in own.items() if not k.startswith(("q_optim", "v_optim"))})
        if load_optimizer:
            self.q_optim.load_state_dict(unflatten_state(meta["q_optim"], tensors))
            self.v_optim.load_state_dict(unflatten_state(meta["v_optim"], tensors))
        return self

    def save(self, path) -> None:
        """Atomically write weights, optimizer states and hyperparameters (safetensors, no pickle)."""
        save_checkpoint(path, *self.checkpoint_state())

    def load(self, path, load_optimizer: bool = True) -> IQLCritic:
        """Load a checkpoint written by save(); the hyperparameters must match."""
        tensors, meta = load_checkpoint(path)
        return self.load_checkpoint_state(tensors, meta, load_optimizer=load_optimizer, source=str(path))


# ---------------------------------------------------------------------------- the IQL algorithm
class GaussianActor(nn.Module):
    """IQL's policy: N(tanh(mu(s)), diag(sigma^2)) with a ReLU MLP mu and a learned, state-independent
    log sigma clipped to [-5, 2]. The mean tanh(mu(s)) is the action at test time."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256, n_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_dim
        self.mu = nn.Sequential(*layers, nn.Linear(width, act_dim))
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action (B, act_dim) in (-1, 1)."""
        return torch.tanh(self.mu(obs))

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """log N(act; tanh(mu(obs)), sigma^2) summed over action dimensions: (B,)."""
        log_std = self.log_std.clamp(-5.0, 2.0)
        z = (act - self(obs)) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class IQLAgent(Agent):
    """Implicit Q-learning (Kostrikov et al. 2022): the IQL critic above, and a Gaussian policy extracted
    from it by advantage-weighted regression on the dataset's actions,

        L_pi = -E[ min(exp(beta (Q_target(s, a) - V(s))), max_weight) log pi(a | s) ],

    with the actor's learning rate cosine-decayed to 0 over the run (the paper's locomotion setup:
    beta 3, expectile 0.7, max weight 100, Adam 3e-4, 2 x 256 ReLU layers). act() returns the mean.
    A run of this agent is also how a critic is pretrained for IDQL (`agent.critic_path`).

    Args:
        critic: an IQLCritic (trained here, one IQL step per update).
        actor: a GaussianActor.
        steps: the run's total updates (the horizon of the actor's cosine decay).
        beta: inverse temperature of the advantage weights.
        max_weight: clip of the weights exp(beta A).
        actor_lr: Adam learning rate of the actor.
        lr_decay: cosine-decay the actor's learning rate to 0 over `steps` (else constant).
    """

    name = "iql"

    def __init__(self, critic: IQLCritic, actor: GaussianActor, steps: int = 1, *, beta: float = 3.0,
                 max_weight: float = 100.0, actor_lr: float = 3e-4, lr_decay: bool = True):
        check_number("steps", steps, 1, integer=True)
        check_number("beta", beta, 0.0)
        check_number("max_weight", max_weight, 0.0, lo_open=True)
        check_number("actor_lr", actor_lr, 0.0, lo_open=True)
        if not isinstance(lr_decay, bool):
            raise ValueError(f"lr_decay must be true or false, got {lr_decay!r}")  # noqa: TRY004 (a config value)
        self.critic, self.device = critic, critic.device
        self.obs_dim, self.act_dim = critic.obs_dim, critic.act_dim
        self.actor = actor.to(self.device)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=actor_lr, fused=True)
        self.steps, self.beta, self.max_weight = steps, beta, max_weight
        self.actor_lr, self.lr_decay = actor_lr, lr_decay
        self.updates = 0

    @classmethod
    def from_config(cls, obs_dim: int, act_dim: int, cfg: Mapping, steps: int,
                    device: str | torch.device = "cpu") -> IQLAgent:
        """Build from the `agent` section of configs/iql.yaml: the agent's keywords, `critic:` (IQLCritic's
        keywords) and `actor_params:` (GaussianActor's). Unknown keys and bad values raise ValueError."""
        cfg = dict(cfg)
        check_keys("agent", cfg, init_keys(cls.__init__, ("critic", "actor", "steps")) | {"critic", "actor_params"})
        critic_cfg = dict(cfg.pop("critic", None) or {})
        check_keys("agent.critic", critic_cfg, init_keys(IQLCritic.__init__, ("obs_dim", "act_dim", "device")))
        actor_cfg = dict(cfg.pop("actor_params", None) or {})
        check_keys("agent.actor_params", actor_cfg, init_keys(GaussianActor.__init__, ("obs_dim", "act_dim")))
        for name in ("hidden_dim", "n_layers"):
            if name in actor_cfg:
                check_number(f"actor_params.{name}", actor_cfg[name], 1, integer=True)
        if "dropout" in actor_cfg:
            check_number("actor_params.dropout", actor_cfg["dropout"], 0.0, 1.0)
        critic = IQLCritic(obs_dim, act_dim, device=device, **critic_cfg)
        return cls(critic, GaussianActor(obs_dim, act_dim, **actor_cfg), steps, **cfg)

    def parts(self) -> dict:
        return {"critic": self.critic, "actor": self.actor, "actor_optim": self.actor_optim}

    def extra_state(self) -> dict:
        return {"updates": self.updates}

    def load_extra_state(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))

    def update(self, batch: Mapping) -> dict:
        """One IQL critic step, then one advantage-weighted actor step. Returns {"q_loss", "v_loss",
        "actor_loss", "adv_mean", "weight_mean", "lr"}."""
        out = self.critic.update(batch)
        obs = _state(batch["obs"]).to(self.device, torch.float32)
        act = batch["act"].to(self.device, torch.float32)
        adv = (self.critic.q(obs, act) - self.critic.v(obs)).squeeze(-1)
        weight = torch.exp(self.beta * adv).clamp(max=self.max_weight)
        loss = -(weight * self.actor.log_prob(obs, act)).mean()
        factor = cosine_decay(self.updates, self.steps) if self.lr_decay else 1.0
        for group in self.actor_optim.param_groups:
            group["lr"] = self.actor_lr * factor
        self.actor_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optim.step()
        self.updates += 1
        return {**out, "actor_loss": loss.item(), "adv_mean": adv.mean().item(), "weight_mean": weight.mean().item(),
                "lr": self.actor_lr * factor}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The policy's mean action (B, act_dim) for normalized observations (B, obs_dim) (deterministic)."""
        obs = _state(obs)
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be (B, {self.obs_dim}), got shape {tuple(obs.shape)}")
        return self.actor(obs.to(self.device, torch.float32))
