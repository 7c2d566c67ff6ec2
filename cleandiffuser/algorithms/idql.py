"""IDQL (Hansen-Estruch et al. 2023): IQL values + a diffusion behaviour policy + resampling.

Training is decoupled: the actor is a conditional generative model of the dataset's actions
(plain behaviour cloning, `actor.update(act, obs)`), the critic is IQL (`IQLCritic`). Acting draws
`num_candidates` actions per observation from the actor and keeps one, favouring a high advantage
Q(s, a) - V(s); see `IDQLAgent.act`.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from ..diffusion import (
    ContinuousConsistencyModel,
    ContinuousEDM,
    DiffusionModel,
    DiscreteDiffusionSDE,
)
from ..diffusion.sampling import solver_nfe
from ..nn_condition import IdentityCondition
from ..nn_diffusion import IDQLMlp
from .base import Agent
from .base import obs_state as _state
from .iql import IQLCritic

__all__ = ["ACTOR_KINDS", "IDQLAgent", "make_idql_actor"]

ACTOR_KINDS = ("ddpm", "edm", "ct", "cd")
SELECTIONS = ("softmax", "greedy", "expectile")

# (solver, sample_steps) an actor built by make_idql_actor samples with unless told otherwise
_DEFAULT_SAMPLING = {DiscreteDiffusionSDE: ("ddpm", None), ContinuousEDM: ("euler", 20),
                     ContinuousConsistencyModel: ("consistency", 2)}


def make_idql_actor(kind: str, obs_dim: int, act_dim: int, *, teacher: ContinuousEDM | None = None,
                    emb_dim: int = 64, hidden_dim: int = 256, n_blocks: int = 3, dropout: float = 0.1,
                    ema_rate: float = 0.9999, lr: float = 3e-4, diffusion_steps: int = 5,
                    distillation_N: int = 18, nn_diffusion=None, device: str | torch.device = "cpu",
                    **model_kw) -> DiffusionModel:
    """A standard IDQL actor: an IDQLMlp denoiser conditioned on the (normalized) observation by
    IdentityCondition(dropout=0), actions bounded to [-1, 1].

    kind:
        "ddpm": DiscreteDiffusionSDE with `diffusion_steps` (5) steps predicting noise (IDQL's actor);
                sample with the "ddpm" solver and sample_steps = diffusion_steps.
        "edm":  ContinuousEDM (Euler / Heun); also the teacher of "cd".
        "ct":   ContinuousConsistencyModel trained by consistency training; its network embeds the noise
                level with untrainable Fourier features of scale 0.02.
        "cd":   ContinuousConsistencyModel distilled from `teacher` (a trained "edm" actor): starts from
                the teacher's EMA weights (its network is copied) and must be updated with
                loss_type="distillation" (IDQLAgent.update_actor does that).
    Defaults follow IDQL (EMA 0.9999, lr 3e-4, 3 LN-ResNet blocks of width 256, dropout 0.1); `model_kw`
    goes to the model's constructor, `nn_diffusion` replaces the default IDQLMlp.
    """
    if kind not in ACTOR_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {ACTOR_KINDS}")
    if kind == "cd" and teacher is None:
        raise ValueError('make_idql_actor("cd", ...) needs teacher=<a trained ContinuousEDM>')
    if nn_diffusion is None:
        if kind == "cd":
            nn_diffusion = copy.deepcopy(teacher.model["diffusion"])  # same architecture as the teacher
        else:
            emb = dict(timestep_emb_type="untrainable_fourier",
                       timestep_emb_params={"scale": 0.02}) if kind == "ct" else {}
            nn_diffusion = IDQLMlp(obs_dim, act_dim, emb_dim=emb_dim, hidden_dim=hidden_dim, n_blocks=n_blocks,
                                   dropout=dropout, **emb)
    common = dict(nn_condition=IdentityCondition(dropout=0.0), ema_rate=ema_rate,
                  optim_params={"lr": lr}, x_max=torch.ones(1, act_dim), x_min=-torch.ones(1, act_dim),
                  device=device, **model_kw)
    if kind == "ddpm":
        return DiscreteDiffusionSDE(nn_diffusion, diffusion_steps=diffusion_steps, predict_noise=True,
                                    **common)
    if kind == "edm":
        return ContinuousEDM(nn_diffusion, **common)
    if kind == "ct":
        return ContinuousConsistencyModel(nn_diffusion, **common)
    actor = ContinuousConsistencyModel(nn_diffusion, **common)
    return actor.prepare_distillation(teacher, distillation_N=distillation_N)


def default_sampling(actor: DiffusionModel) -> tuple[str, int]:
    """(solver, sample_steps) used by IDQLAgent when none are given."""
    for cls, (solver, steps) in _DEFAULT_SAMPLING.items():
        if isinstance(actor, cls):
            return solver, steps if steps is not None else actor.diffusion_steps
    return actor.default_solver, 5


class IDQLAgent(Agent):
    """IDQL: a behaviour-cloning diffusion actor, an IQL critic and action resampling.

    Args:
        actor: any DiffusionModel of actions (B, act_dim) conditioned on observations (B, obs_dim),
            e.g. from make_idql_actor.
        critic: an IQLCritic.
        num_candidates: actions drawn per observation in act().
        weight_temperature: inverse temperature of the softmax over advantages.
        selection: "softmax" (sample a candidate with probability softmax(weight_temperature * A)),
            "greedy" (the candidate with the largest A) or "expectile" (the IDQL paper's resampling: weights
            |tau - 1(A < 0)|, tau the critic's expectile; weight_temperature unused).
        solver, sample_steps: the actor's sampler; None picks the actor family's default (DDPM: "ddpm"
            with diffusion_steps steps, EDM: Euler 20, consistency: 2 steps).
        temperature: scale of the actor's initial noise.
        distill_at: with an EDM actor, the update count at which the agent distills it: the EDM
            becomes the frozen `teacher` and a consistency model started from it (make_idql_actor("cd"))
            becomes the actor, trained by consistency distillation from then on (the seed-000 workflow
            edm_training -> cd_training in one run). None: never.
        distillation_N: Karras grid size of that distillation.
        train_critic: False keeps the critic as it is (a pretrained one, e.g. loaded from an `iql` run:
            `agent.critic_path` in configs/idql.yaml); update() then trains the actor only.
    """

    name = "idql"

    def __init__(self, actor: DiffusionModel, critic: IQLCritic, num_candidates: int = 256,
                 weight_temperature: float = 100.0, selection: str = "softmax", sample_steps: int | None = None,
                 solver: str | None = None, temperature: float = 1.0, distill_at: int | None = None,
                 distillation_N: int = 18, train_critic: bool = True):
        if selection not in SELECTIONS:
            raise ValueError(f"selection={selection!r} is not one of {SELECTIONS}")
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        if distill_at is not None and not isinstance(actor, ContinuousEDM):
            raise ValueError(f"distill_at needs an EDM actor to distill, got a {type(actor).__name__}")
        self.actor, self.critic, self.teacher = actor, critic, None
        self.obs_dim = getattr(critic, "obs_dim", None)
        self.act_dim = getattr(critic, "act_dim", None)
        self.device = actor.device
        self.num_candidates, self.weight_temperature, self.selection = num_candidates, weight_temperature, selection
        self.requested_solver, self.requested_steps = solver, sample_steps
        self.temperature = temperature
        self.distill_at, self.distillation_N = distill_at, distillation_N
        if not isinstance(train_critic, bool):
            raise ValueError(f"train_critic must be true or false, got {train_critic!r}")  # noqa: TRY004
        self.train_critic = train_critic
        self.updates = 0
        self._set_sampling()

    @classmethod
    def from_config(cls, obs_dim: int, act_dim: int, cfg: Mapping, steps: int,
                    device: str | torch.device = "cpu") -> IDQLAgent:
        """Build from the `agent` section of configs/idql.yaml; `steps` is the run's update count
        (a "cd" actor is an EDM for the first steps - distill_steps, then distilled). With `critic_path`
        set the critic is not trained: the run loads it from there (runner.offline.load_pretrained_critic).
        With `teacher_path` (actor=cd) every update distills: the run first loads that run's trained EDM
        into the actor (runner.offline.load_pretrained_teacher), the seed-000 edm_training -> cd_training."""
        cfg = dict(cfg)
        if cfg.pop("critic_path", None) is not None:
            cfg["train_critic"] = False
        kind = cfg.pop("actor")
        if kind not in ACTOR_KINDS:
            raise ValueError(f"agent.actor={kind!r} is not one of {ACTOR_KINDS}")
        critic = IQLCritic(obs_dim, act_dim, device=device, **cfg.pop("critic", {}))
        distill_steps = cfg.pop("distill_steps", None)
        distill_at = None
        if cfg.pop("teacher_path", None) is not None:
            if kind != "cd":
                raise ValueError(f"agent.teacher_path is the EDM that actor=cd distills; agent.actor={kind!r} "
                                 "has no teacher")
            if distill_steps is not None:
                raise ValueError("with agent.teacher_path every update distills: leave agent.distill_steps null, "
                                 f"got {distill_steps}")
            distill_at, kind = 0, "edm"
        elif kind == "cd":
            if distill_steps is None or not 0 < distill_steps < steps:
                raise ValueError(f"agent.actor=cd needs 0 < agent.distill_steps < steps={steps}, "
                                 f"got {distill_steps}")
            distill_at, kind = steps - distill_steps, "edm"
        actor = make_idql_actor(kind, obs_dim, act_dim, device=device, **cfg.pop("actor_params", {}))
        return cls(actor, critic, distill_at=distill_at, **cfg)

    def _set_sampling(self) -> None:
        solver, steps = default_sampling(self.actor)
        self.solver = self.requested_solver or solver
        if self.requested_solver is not None and self.teacher is not None:
            self.solver = "consistency"  # a solver asked for the EDM phase does not apply to the student
        self.sample_steps = self.requested_steps if self.requested_steps is not None else steps

    def start_distillation(self) -> None:
        """Freeze the EDM actor as the teacher; a consistency model started from it becomes the actor."""
        edm = self.actor
        self.actor = make_idql_actor("cd", self.obs_dim, self.act_dim, teacher=edm, device=self.device,
                                     ema_rate=edm.ema_rate, lr=edm.optimizer.param_groups[0]["lr"],
                                     distillation_N=self.distillation_N, precision=edm.precision)
        if edm.compiled:  # the student trains as the EDM did
            self.actor.compile_network()
        self.teacher = edm
        self._set_sampling()

    def nfe(self) -> int:
        """Actor network evaluations per act() (all candidates are drawn in one batch)."""
        return solver_nfe(self.solver, self.sample_steps)

    def parts(self) -> dict:
        parts = {"actor": self.actor, "critic": self.critic}
        if self.teacher is not None:
            parts["teacher"] = self.teacher
        return parts

    def extra_state(self) -> dict:
        return {"updates": self.updates, "distilling": self.teacher is not None}

    def load_extra_state(self, state: dict) -> None:
        self.updates = state.get("updates", 0)
        if state.get("distilling") and self.teacher is None:
            self.start_distillation()

    # ------------------------------------------------------------------ training (decoupled)
    def update_actor(self, batch: Mapping) -> dict:
        """Behaviour cloning: actor.update(act, obs) (distillation loss for a CD actor)."""
        kw = {"loss_type": "distillation"} if getattr(self.actor, "teacher", None) is not None else {}
        return self.actor.update(batch["act"], _state(batch["obs"]), **kw)

    def update_critic(self, batch: Mapping) -> dict:
        """One IQL step: {"q_loss", "v_loss"}."""
        return self.critic.update(batch)

    def update(self, batch: Mapping) -> dict:
        """Both updates on the same batch: {"actor_loss", "q_loss", "v_loss"} (the actor's only with a
        pretrained critic: train_critic=False); starts the distillation when `distill_at` updates are done."""
        if self.distill_at is not None and self.teacher is None and self.updates >= self.distill_at:
            self.start_distillation()
        out = self.update_critic(batch) if self.train_critic else {}
        out["actor_loss"] = self.update_actor(batch)["loss"]
        self.updates += 1
        return out

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def candidates(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The N candidate actions (B, N, act_dim) per normalized observation (B, obs_dim) and their advantages
        A = Q(s, a) - V(s) (B, N): each observation repeated N times, all B * N drawn in ONE batched
        `actor.sample` call (EMA weights), scored with the target twin-Q minimum."""
        obs = _state(obs)
        if obs.dim() != 2:
            raise ValueError(f"obs must be (B, obs_dim), got shape {tuple(obs.shape)}")
        obs = obs.to(self.actor.device, torch.float32)
        b, n = obs.shape[0], self.num_candidates
        obs_rep = obs.repeat_interleave(n, dim=0)  # (B * N, obs_dim): rows b*N .. b*N+N-1 belong to obs b
        act_dim = self.critic.act_dim
        prior = torch.zeros(b * n, act_dim, device=self.actor.device)
        cand, _ = self.actor.sample(prior, solver=self.solver, n_samples=b * n, sample_steps=self.sample_steps,
                                    temperature=self.temperature, condition_cfg=obs_rep)
        adv = self.critic.q(obs_rep, cand).view(b, n) - self.critic.v(obs).view(b, 1)  # V once per observation
        return cand.view(b, n, act_dim), adv

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions (B, act_dim) for normalized observations obs (B, obs_dim): of the N `candidates` per
        observation, "greedy" keeps argmax_a A; "softmax" samples one with probabilities
        softmax(weight_temperature * A) over its N candidates, "expectile" with weights tau (A >= 0) or
        1 - tau (A < 0) (torch.multinomial; `generator` makes this draw reproducible)."""
        cand, adv = self.candidates(obs)
        if self.selection == "greedy":
            idx = adv.argmax(dim=1)
        else:
            if self.selection == "softmax":
                probs = torch.softmax(self.weight_temperature * adv, dim=1)
            else:  # multinomial normalizes the weights
                tau = self.critic.expectile
                probs = torch.where(adv < 0, 1.0 - tau, tau)
            idx = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return cand[torch.arange(cand.shape[0], device=cand.device), idx]
