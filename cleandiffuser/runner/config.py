"""Run configurations: YAML files in cleandiffuser/configs (or a user's file) plus `key=value` overrides.

    cfg = load_config("idql", ["agent.actor=edm", "steps=20000"])

Overrides may only set keys the file has (a typo is an error that lists the valid keys); values are
parsed as YAML (`eval.seeds=[0,1,2]`, `agent.distill_steps=null`).

A file may hold a `per_task` section: the published per-task settings, keyed by the dataset's task
(`hopper-medium-replay` for hopper-medium-replay-cd-v0, hopper-medium-replay-v2 or a file named so):

    per_task:
      hopper-medium-replay: [agent.weight_temperature=50.0]

They are applied on top of the file and below the command line, and recorded in the resolved config as
`task_settings`, so a run's config.yaml says where each value came from.
"""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, GrammarParseError

from ..env.evaluation import EPISODE_SEED_STRIDE
from .rules import AnyOf, Choice, Flag, Integer, ListOf, Number, Rule, Text, first_violation, lookup, yaml_repr

__all__ = ["CONFIG_DIR", "ConfigError", "available_configs", "config_path", "load_config", "apply_overrides",
           "REQUIRED_KEYS", "RUN_RULES", "read_yaml", "task_key"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: every offline-RL run config has these top-level keys
REQUIRED_KEYS = ("algo", "dataset", "seed", "device", "precision", "steps", "batch_size", "normalize_reward",
                 "log_every", "checkpoint_every", "keep_every", "eval_every", "eval", "agent")

#: agent keys without which an algorithm's agent cannot be built (a config of another algorithm lacks them)
REQUIRED_AGENT_KEYS = {"idql": ("actor",)}

POSITIVE = Number(0, low_open=True)
NON_NEGATIVE = Number(0)
#: a row per entry at the end of training; null: the agent's own default
SAMPLE_STEPS = AnyOf((Integer(1, nullable=True), ListOf(Integer(1, nullable=True))),
                     note="null: the agent's default sample steps")

#: type and range of every run-level key (agent keys: _agent_rules); checked before a run does any work
RUN_RULES = {
    "seed": Integer(0, 2 ** 32 - 1),
    "dataset": Text(),
    "env": Text(nullable=True, note="null: inferred from the dataset"),
    "precision": Choice(("auto", "bf16", "fp32")),
    "compile": Flag(),
    "steps": Integer(1),
    "batch_size": Integer(1),
    "normalize_reward": Flag(),
    "clip_actions": Flag(),
    "log_every": Integer(0, note="0 = never"),
    "checkpoint_every": Integer(0, note="0 = never"),
    "keep_every": Integer(0, note="0 = never"),
    "eval_every": Integer(0, note="0 = never"),
    "eval.episodes": Integer(0, EPISODE_SEED_STRIDE - 1, note="per eval seed; 0: no evaluation"),
    "eval.n_envs": Integer(1),
    "eval.seeds": ListOf(Integer(0), distinct=True),
    "eval.sample_steps": SAMPLE_STEPS,
}
#: per algorithm, rules that replace RUN_RULES' entry
ALGO_RUN_RULES = {"iql": {"eval.sample_steps": Choice((None, [None]), note="iql has no sampler: one row")}}


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the valid choices."""


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name: str | os.PathLike) -> Path:
    """A built-in config name (`idql`) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    builtin = CONFIG_DIR / f"{name}.yaml"
    if not builtin.is_file():
        raise ConfigError(f"unknown config {str(name)!r}; built-in configs: {', '.join(available_configs())} "
                          "(or pass a path to a .yaml file)")
    return builtin


def _keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out.append(prefix + str(k))
        if isinstance(v, DictConfig):
            out.extend(_keys(v, f"{prefix}{k}."))
    return out


def apply_overrides(cfg: DictConfig, overrides: list[str], source: str = "config") -> DictConfig:
    """Merge `key=value` strings into cfg; unknown keys raise ConfigError listing the valid ones."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        try:
            patch = OmegaConf.from_dotlist([item])
        except GrammarParseError as e:
            raise ConfigError(f"cannot parse override {item!r}: {e}") from e
        OmegaConf.set_struct(cfg, True)
        try:
            cfg.merge_with(patch)
        except (ConfigAttributeError, ConfigKeyError) as e:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            node = OmegaConf.select(cfg, parent) if parent else cfg
            valid = _keys(node, parent + "." if parent else "") if isinstance(node, DictConfig) else _keys(cfg)
            raise ConfigError(f"unknown key {key!r} in override {item!r} for {source}; valid keys here: "
                              f"{', '.join(valid)}") from e
        finally:
            OmegaConf.set_struct(cfg, False)
    return cfg


def read_yaml(path: str | os.PathLike) -> DictConfig:
    """A YAML file of settings; ConfigError, in one line naming the file and the place, when it is not valid
    YAML or does not hold a mapping."""
    try:
        cfg = OmegaConf.load(path)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - yaml's and OmegaConf's parse errors: report the file
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value lines), not a {type(cfg).__name__}")
    return cfg


def _yaml_problem(error: Exception) -> str:
    """A parse error in one line: yaml's problem and where (1-based line and column), else the message."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def _load_file(name, seen: tuple = ()) -> DictConfig:
    """A config file; `base: NAME` in it means "NAME's settings, with mine on top"."""
    path = config_path(name)
    if path in seen:
        raise ConfigError(f"config inheritance loops: {' -> '.join(map(str, seen + (path,)))}")
    cfg = read_yaml(path)
    if "base" in cfg:
        parent = _load_file(cfg.pop("base"), seen + (path,))
        OmegaConf.set_struct(parent, True)  # a child may only set keys its base has
        try:
            parent.merge_with(cfg)
        except (ConfigAttributeError, ConfigKeyError) as e:
            raise ConfigError(f"{path} sets a key its base config does not have: {e}") from e
        OmegaConf.set_struct(parent, False)
        cfg = parent
    return cfg


def task_key(dataset) -> str:
    """The task a dataset name or path stands for: its file stem without the version tag
    (`-cd-v0` for the generated data, `-vN` for D4RL's): halfcheetah-medium-cd-v0 -> halfcheetah-medium."""
    stem = Path(str(dataset)).name
    for suffix in (".hdf5", ".h5"):
        stem = stem.removesuffix(suffix)
    return re.sub(r"(-cd)?-v\d+$", "", stem)


def _per_task(cfg: DictConfig, path: Path) -> dict[str, list[str]]:
    table = cfg.pop("per_task", None)
    if table is None:
        return {}
    if not isinstance(table, DictConfig) or any(not OmegaConf.is_list(v) or not all(isinstance(x, str) for x in v)
                                                for v in table.values()):
        raise ConfigError(f"{path}: per_task must map task names to lists of key=value strings")
    return {str(k): list(v) for k, v in table.items()}


def load_config(name: str | os.PathLike, overrides: list[str] | tuple = ()) -> DictConfig:
    """The config file `name` (built-in name or path) with its per-task settings for the chosen dataset,
    then `overrides`, applied and checked."""
    path = config_path(name)
    base = _load_file(name)
    per_task = _per_task(base, path)
    cfg = apply_overrides(base.copy(), list(overrides), source=str(path))  # which dataset?
    task = task_key(cfg.dataset) if "dataset" in cfg else None
    if per_task.get(task):  # the task's settings go under the command line's
        cfg = apply_overrides(base.copy(), per_task[task], source=f"{path} per_task[{task}]")
        apply_overrides(cfg, list(overrides), source=str(path))
        cfg.task_settings = per_task[task]
    check_config(cfg, str(path))
    return cfg


def _agent_rules(algo: str) -> dict[str, Rule]:
    """Value rules of the `agent` section of `algo`'s config (keys relative to `agent.`)."""
    from ..algorithms.idql import ACTOR_KINDS, SELECTIONS

    iql_critic = {"critic.hidden_dim": Integer(1), "critic.expectile": Number(0, 1, low_open=True, high_open=True),
                  "critic.discount": Number(0, 1), "critic.tau": Number(0, 1, low_open=True),
                  "critic.lr": POSITIVE}
    diffusion_actor = {"actor_params.diffusion_steps": Integer(1), "actor_params.emb_dim": Integer(1),
                       "actor_params.hidden_dim": Integer(1), "actor_params.ema_rate": Number(0, 1),
                       "actor_params.lr": POSITIVE, "actor_params.predict_noise": Flag(),
                       "actor_params.noise_schedule": Text()}
    selection = {"num_candidates": Integer(1), "weight_temperature": NON_NEGATIVE,
                 "sample_steps": Integer(1, nullable=True, note="null: the actor's default")}
    if algo == "iql":
        return {"beta": NON_NEGATIVE, "max_weight": POSITIVE, "actor_lr": POSITIVE, "lr_decay": Flag(), **iql_critic,
                "actor_params.hidden_dim": Integer(1), "actor_params.n_layers": Integer(1),
                "actor_params.dropout": Number(0, 1, high_open=True)}
    if algo == "idql":
        return {"actor": Choice(ACTOR_KINDS), "selection": Choice(SELECTIONS), **selection, "temperature": NON_NEGATIVE,
                "distill_steps": Integer(1, nullable=True), "critic_path": Text(nullable=True, note="a path"),
                "teacher_path": Text(nullable=True, note="a path"), **iql_critic,
                "actor_params.emb_dim": Integer(1), "actor_params.hidden_dim": Integer(1),
                "actor_params.n_blocks": Integer(1), "actor_params.dropout": Number(0, 1, high_open=True),
                "actor_params.ema_rate": Number(0, 1), "actor_params.lr": POSITIVE,
                "actor_params.diffusion_steps": Integer(1)}
    if algo in ("dql", "edp"):
        return {"eta": NON_NEGATIVE, "grad_norm": Number(0, low_open=True, nullable=True, note="null: no clipping"),
                "discount": Number(0, 1), "tau": Number(0, 1, low_open=True), "lr_decay": Flag(),
                "max_q_backup": Flag(), "backup_samples": Integer(1), "ema_start": Integer(0), "ema_every": Integer(1),
                **selection, "temperature": NON_NEGATIVE, "act_ema": Flag(), "solver": Text(),
                "critic.hidden_dim": Integer(1), "critic.lr": POSITIVE, **diffusion_actor}
    if algo == "dbc":
        return {"solver": Text(), "sample_steps": selection["sample_steps"], "temperature": NON_NEGATIVE,
                **diffusion_actor, "actor_params.weight_decay": NON_NEGATIVE,
                "actor_params.grad_clip_norm": Number(0, low_open=True, nullable=True, note="null: no clipping")}
    if algo == "fql":
        return {"alpha": NON_NEGATIVE, "normalize_q_loss": Flag(), "q_agg": Choice(("mean", "min")),
                "flow_steps": Integer(1), "discount": Number(0, 1), "tau": Number(0, 1, low_open=True),
                "lr": POSITIVE, "num_candidates": Integer(1), "temperature": NON_NEGATIVE,
                "policy.hidden_dim": Integer(1), "policy.layers": Integer(1), "critic.hidden_dim": Integer(1),
                "flow_params.hidden_dim": Integer(1), "flow_params.emb_dim": Integer(2), "flow_params.lr": POSITIVE,
                "flow_params.ema_rate": Number(0, 1), "flow_params.timestep_emb_type": Text()}
    return {}


def _max_sample_steps(cfg: DictConfig) -> int | None:
    """The most sample steps the agent's actor allows: a discrete-time actor's diffusion_steps (DQL, EDP, DBC,
    IDQL's ddpm); None when any count works (continuous time) or the agent has no sampler."""
    params = cfg.agent.get("actor_params") or {}
    if cfg.algo in ("dql", "edp", "dbc"):
        return params.get("diffusion_steps")
    if cfg.algo == "idql" and cfg.agent.get("actor") == "ddpm":
        from ..algorithms.idql import make_idql_actor

        return params.get("diffusion_steps", inspect.signature(make_idql_actor).parameters["diffusion_steps"].default)
    return None


def _check_sample_steps_fit(cfg: DictConfig) -> None:
    """eval.sample_steps and agent.sample_steps within what the actor can sample with (else the evaluation at
    the end of training fails)."""
    limit = _max_sample_steps(cfg)
    if not isinstance(limit, int):
        return
    requested = lookup(cfg, "eval.sample_steps")
    requested = requested if isinstance(requested, list) else [requested]
    for key, values in (("eval.sample_steps", requested), ("agent.sample_steps", [cfg.agent.get("sample_steps")])):
        too_many = [k for k in values if isinstance(k, int) and k > limit]
        if too_many:
            raise ConfigError(f"{key}={yaml_repr(lookup(cfg, key))}: the {cfg.algo} actor samples with at most "
                              f"{limit} steps (its diffusion_steps), got {too_many[0]}")


def check_config(cfg: DictConfig, source: str = "config") -> None:
    """Raise ConfigError for anything a run would trip over later: missing keys, an unknown algorithm, and every
    value outside its type and range (RUN_RULES, the algorithm's agent rules), naming the key and the valid
    values. Called before a run does any work."""
    from ..algorithms import ALGORITHMS

    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"{source} lacks the keys {missing}")
    if cfg.algo not in ALGORITHMS:
        raise ConfigError(f"algo={cfg.algo!r} is not one of {sorted(ALGORITHMS)}")
    if not (cfg.device == "auto" or str(cfg.device).startswith(("cpu", "cuda"))):
        raise ConfigError(f"device={cfg.device!r}: use auto, cpu, cuda or cuda:N")
    for section in ("eval", "agent"):
        if not isinstance(cfg[section], DictConfig):
            raise ConfigError(f"{source}: {section} must be a section of settings, got "
                              f"{yaml_repr(lookup(cfg, section))}")
    for key in ("episodes", "seeds", "n_envs", "sample_steps"):
        if key not in cfg.eval:
            raise ConfigError(f"{source}: eval.{key} is missing")
    lacking = [k for k in REQUIRED_AGENT_KEYS.get(cfg.algo, ()) if k not in cfg.agent]
    if lacking:
        raise ConfigError(f"{source}: the agent section of an {cfg.algo} config needs agent.{lacking[0]} (it has "
                          f"{sorted(cfg.agent)}); is this config for another algorithm?")
    rules = {**RUN_RULES, **ALGO_RUN_RULES.get(cfg.algo, {})}
    problem = first_violation(cfg, rules) or first_violation(cfg, _agent_rules(cfg.algo), prefix="agent.")
    if problem:
        raise ConfigError(problem)
    _check_sample_steps_fit(cfg)
