"""IQL value learning (Kostrikov et al. 2022), the critic half of IDQL (Hansen-Estruch et al. 2023).

One update on a batch of transitions (s, a, r, s', done):

    V:  L_V = E[ |expectile - 1(u < 0)| u^2 ],   u = Q_target(s, a) - V(s)     (expectile regression)
    Q:  L_Q = E[ (Q1(s, a) - y)^2 + (Q2(s, a) - y)^2 ],   y = r + discount (1 - done) V(s')
    target:  Q_target <- (1 - tau) Q_target + tau Q          (Polyak averaging, tau small)

Q_target(s, a) is the minimum of the target network's twin heads. No policy is involved: V learns an
upper expectile of Q over the *dataset's* actions, so no out-of-distribution action is ever queried.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from ..serialization import (
    flatten_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from ..utils.iql_networks import IDQLQNet, IDQLVNet
from .base import obs_state as _state
from .base import polyak_update

__all__ = ["IQLCritic", "expectile_loss"]


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
