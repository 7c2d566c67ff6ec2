"""Checks that stop a training run before it damages its run directory, shared by the offline-RL and
imitation trainers: a loss that has turned NaN/inf (no checkpoint of diverged weights is written), and a
resume whose config would change what the checkpoint was trained as."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .config import ConfigError

__all__ = ["NonFiniteLossError", "check_finite_losses", "check_resume_config", "config_changes"]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the run stopped without overwriting its checkpoint."""


def check_finite_losses(sums: Mapping[str, float], first_step: int, step: int, checkpoint) -> None:
    """Raise NonFiniteLossError if a loss summed over steps first_step..step is NaN or infinite (a NaN or inf
    on any step of the window stays in its sum). `checkpoint`: the file that is kept as it is."""
    bad = [k for k, v in sums.items() if not math.isfinite(v)]
    if not bad:
        return
    key = bad[0]
    raise NonFiniteLossError(
        f"the training loss {key!r} became {sums[key]} between steps {first_step:,} and {step:,}"
        + (f" (also {', '.join(map(repr, bad[1:]))})" if len(bad) > 1 else "")
        + f"; training stopped and {checkpoint} was not overwritten (it holds the last checked, finite state, "
        "if any). Likely causes: a learning rate too high, unnormalized rewards or observations (e.g. "
        "normalize_reward=false with large rewards), or extreme values (huge, inf or NaN) in the dataset")


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


_ABSENT = "<absent>"


def config_changes(recorded: Mapping, cfg: Mapping, fixed: Iterable[str], free: Iterable[str] = ()) -> list[str]:
    """"key: old -> new" for each setting under a `fixed` key (a key or a section, e.g. "seed", "agent")
    whose value differs between the recorded and the new config, except the `free` keys (e.g.
    "agent.num_candidates"). A key the recorded config lacks is one its version did not have yet: not compared."""
    old, new = _flatten(recorded), _flatten(cfg)
    fixed, free = tuple(fixed), set(free)

    def watched(key: str) -> bool:
        return key not in free and any(key == f or key.startswith(f + ".") for f in fixed)

    return [f"{k}: {old[k]!r} -> {new.get(k, _ABSENT)!r}"
            for k in sorted(old) if watched(k) and old[k] != new.get(k, _ABSENT)]


def check_resume_config(recorded: Mapping, cfg: Mapping, checkpoint_step: int, steps: int, steps_key: str,
                        fixed: Iterable[str], free: Iterable[str], checkpoint) -> None:
    """A resume may only extend a run: `steps` (the config's `steps_key`) at least the checkpoint's step, and
    the same settings under `fixed` (data, seed, algorithm, network) as the checkpoint's recorded config,
    `free` keys (acting/evaluation-only settings) excepted. Raises ConfigError naming what differs."""
    if steps < checkpoint_step:
        raise ConfigError(f"cannot resume from {checkpoint}: {steps_key}={steps} is below its step "
                          f"{checkpoint_step:,}; a resume may only extend a run (set {steps_key} >= "
                          f"{checkpoint_step}), or start a new run for fewer steps")
    changes = config_changes(recorded, cfg, fixed, free)
    if changes:
        raise ConfigError(f"cannot resume from {checkpoint}: the config changes what it was trained as ("
                          + "; ".join(changes) + "). A resume continues the same training: only steps and "
                          f"logging/evaluation settings may change (and {', '.join(sorted(free)) or 'nothing else'});"
                          " start a new run (another --run-dir) for other settings")
