"""What the trainer, the evaluator and the checkpoint code need of an offline-RL algorithm.

An `Agent` owns its networks and optimizers and does three things:

    agent.update(batch) -> {"name": float, ...}   one gradient step on a batch of transitions
    agent.act(obs)      -> actions (B, act_dim)    obs: (B, obs_dim) normalized observations
    agent.parts()       -> {name: component}       everything that must be checkpointed

A batch has the item structure of `D4RLMuJoCoTDDataset`: {"obs": {"state"}, "next_obs": {"state"},
"act", "rew", "tml"} with rew, tml of shape (B, 1). Checkpointing is generic over `parts()`: a
component is a DiffusionModel, an IQLCritic (anything with checkpoint_state/load_checkpoint_state),
an nn.Module or a torch optimizer; `agent.extra_state()` adds JSON-able state of its own (phase,
step counters). Tensors go to safetensors and the rest to JSON, so loading executes no code.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ..serialization import flatten_state, unflatten_state

__all__ = ["Agent", "check_keys", "check_number", "cosine_decay", "init_keys", "obs_state", "polyak_update",
           "seeded"]


def obs_state(obs) -> torch.Tensor:
    """Observations as a tensor: the dataset's {"state": tensor} item, or a tensor itself."""
    return obs["state"] if isinstance(obs, Mapping) else obs


# ---------------------------------------------------------------------------- helpers for agents
def check_keys(section: str, cfg: Mapping, allowed: Iterable[str]) -> None:
    """ValueError naming the unknown keys of a config section and the valid ones."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{section} must be a mapping of settings, got {type(cfg).__name__}")  # noqa: TRY004
    allowed = set(allowed)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {section}; valid keys: {sorted(allowed)}")


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, *, integer: bool = False,
                 lo_open: bool = False) -> None:
    """ValueError unless value is a real number (an int if `integer`) in [lo, hi] ((lo, hi] if lo_open)."""
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    if not ok_type or (not integer and not math.isfinite(value)):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value!r}")


def init_keys(fn: Callable, exclude: Iterable[str] = ()) -> set[str]:
    """Keyword parameter names of a function (a class's settings that a config may give)."""
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self", *exclude}


@contextlib.contextmanager
def seeded(generator: torch.Generator | None, device: torch.device):
    """Within the block, torch's global RNG on `device` is seeded from `generator` (which advances) and
    restored afterwards, so every random draw of a sampler is reproducible from the generator alone.
    With generator=None the block uses the global RNG as it is."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device).item())
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


def cosine_decay(step: int, steps: int) -> float:
    """The factor 0.5 (1 + cos(pi min(step, steps) / steps)) of a learning rate decayed from its base to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau online (moves the target a fraction tau toward the online net)."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


class Agent:
    """Base class of offline-RL agents; subclasses implement update, act and parts."""

    #: the registry name ("idql", "dql", ...)
    name: str = "agent"
    obs_dim: int
    act_dim: int
    device: torch.device

    def update(self, batch: Mapping) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def parts(self) -> dict[str, object]:
        raise NotImplementedError

    # ------------------------------------------------------------------ optional hooks
    def train(self, mode: bool = True) -> Agent:
        """Put every network part in training (or eval) mode."""
        for part in self.parts().values():
            if isinstance(part, nn.Module):
                part.train(mode)
        return self

    def eval(self) -> Agent:
        return self.train(False)

    def compile_network(self) -> Agent:
        """Compile the training passes: by default each part's own compile_network (generative models,
        critics); an agent that compiles its whole update as one graph overrides this."""
        for part in self.parts().values():
            if hasattr(part, "compile_network"):
                part.compile_network()
        return self

    def extra_state(self) -> dict:
        """JSON-able state beyond the parts (e.g. the training phase)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore extra_state(); called before the parts are loaded (it may rebuild a part)."""

    # ------------------------------------------------------------------ persistence
    def checkpoint_state(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
        tensors: dict[str, torch.Tensor] = {}
        parts_meta = {}
        for name, part in self.parts().items():
            head = f"{prefix}{name}/"
            if hasattr(part, "checkpoint_state"):
                t, m = part.checkpoint_state(head)
                tensors.update(t)
                parts_meta[name] = {"kind": "component", "meta": m}
            elif isinstance(part, nn.Module):
                tensors.update({head + k: v for k, v in part.state_dict().items()})
                parts_meta[name] = {"kind": "module"}
            elif isinstance(part, torch.optim.Optimizer):
                parts_meta[name] = {"kind": "optimizer",
                                    "state": flatten_state(part.state_dict(), head + "optim", tensors)}
            else:
                raise TypeError(f"{type(self).__name__}.parts()[{name!r}] is a {type(part).__name__}; "
                                "expected a DiffusionModel, IQLCritic, nn.Module or optimizer")
        meta = {"agent": type(self).__name__, "parts": parts_meta, "extra": self.extra_state()}
        return tensors, meta

    def load_checkpoint_state(self, tensors: Mapping[str, torch.Tensor], meta: dict, prefix: str = "",
                              load_optimizer: bool = True, source: str = "checkpoint") -> Agent:
        if meta.get("agent") != type(self).__name__:
            raise ValueError(f"{source} holds a {meta.get('agent')} agent, not a {type(self).__name__}")
        self.load_extra_state(meta.get("extra", {}))
        parts, saved = self.parts(), meta["parts"]
        if set(parts) != set(saved):
            raise ValueError(f"{source}: agent parts {sorted(parts)} do not match the checkpoint's {sorted(saved)}")
        for name, part in parts.items():
            head, entry = f"{prefix}{name}/", saved[name]
            if entry["kind"] == "component":
                part.load_checkpoint_state(tensors, entry["meta"], prefix=head, load_optimizer=load_optimizer,
                                           source=f"{source} [{name}]")
            elif entry["kind"] == "module":
                state = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
                missing, unexpected = part.load_state_dict(state, strict=False)
                if missing or unexpected:
                    raise ValueError(f"{source} [{name}] does not match the network: missing {missing}, "
                                     f"unexpected {unexpected}")
            elif load_optimizer:
                part.load_state_dict(unflatten_state(entry["state"], tensors))
        return self
