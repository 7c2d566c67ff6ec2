"""Type and range rules for configuration values, used as declarative tables of dotted key -> rule:

    RULES = {"steps": Integer(1), "eval.seeds": ListOf(Integer(0), distinct=True), "agent.lr": Number(0, low_open=True)}
    problem = first_violation(cfg, RULES)   # None, or "eval.n_envs must be an integer >= 1, got 0"

Each rule says in words what it accepts, so a bad value gets one message naming the key, the value and the
valid range. Booleans are not integers here (YAML's `steps=true` is not 1) and numbers must be finite (`nan`
is not a temperature). A key the config does not have is skipped: unknown keys are refused by
`apply_overrides` and missing ones by the code that needs them.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["AnyOf", "Choice", "Flag", "Integer", "ListOf", "Number", "Rule", "Text", "first_violation", "lookup",
           "yaml_repr"]

_ABSENT = object()


def yaml_repr(value) -> str:
    """A value as it would be written in a config or override: null, true, 'abc', [1, 2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_repr(v) for v in value) + "]"
    return repr(value)


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def lookup(cfg, key: str):
    """The value at a dotted key of a DictConfig or nested dict (containers as plain lists/dicts), or _ABSENT
    when a part of the path is not there or the value is OmegaConf's mandatory-missing `???`."""
    node = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig):
            if part not in node or OmegaConf.is_missing(node, part):
                return _ABSENT
            node = node[part]
        elif isinstance(node, Mapping):
            if part not in node:
                return _ABSENT
            node = node[part]
        else:
            return _ABSENT
    return _plain(node)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds_words(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def _in_bounds(value, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


class Rule:
    """What a config value may be: `accepts(value)`, and `expected`, the same in words."""

    nullable: bool = False
    note: str = ""

    def accepts(self, value) -> bool:
        if value is None:
            return self.nullable
        return self._accepts(value)

    def _accepts(self, value) -> bool:
        raise NotImplementedError

    def _words(self) -> str:
        raise NotImplementedError

    @property
    def expected(self) -> str:
        words = ("null or " if self.nullable else "") + self._words()
        return f"{words} ({self.note})" if self.note else words

    def message(self, key: str, value) -> str:
        """Why `value` is refused at `key`, with the valid values."""
        return f"{key} must be {self.expected}, got {yaml_repr(value)}"


@dataclass(frozen=True)
class Integer(Rule):
    """An int (not a bool) in [low, high]."""

    low: int | None = None
    high: int | None = None
    nullable: bool = False
    note: str = ""

    def _accepts(self, value) -> bool:
        return _is_int(value) and _in_bounds(value, self.low, self.high, False, False)

    def _words(self) -> str:
        if self.low == 1 and self.high is None:
            return "a positive integer (>= 1)"
        return "an integer" + _bounds_words(self.low, self.high, False, False)


@dataclass(frozen=True)
class Number(Rule):
    """A finite int or float (not a bool) between low and high, each bound open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    note: str = ""

    def _accepts(self, value) -> bool:
        return _is_finite_number(value) and _in_bounds(value, self.low, self.high, self.low_open, self.high_open)

    def _words(self) -> str:
        return "a finite number" + _bounds_words(self.low, self.high, self.low_open, self.high_open)


@dataclass(frozen=True)
class Flag(Rule):
    """true or false (YAML booleans; not 0/1 or the string 'yes')."""

    nullable: bool = False
    note: str = ""

    def _accepts(self, value) -> bool:
        return isinstance(value, bool)

    def _words(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed set of values."""

    options: tuple = ()
    note: str = ""

    def accepts(self, value) -> bool:
        return value in self.options

    def _words(self) -> str:
        return "one of " + ", ".join(yaml_repr(o) for o in self.options)

    def message(self, key: str, value) -> str:
        options = ", ".join(yaml_repr(o) for o in self.options)
        return f"{key}={yaml_repr(value)} is not one of {options}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Text(Rule):
    """A non-empty string (a name or a path)."""

    nullable: bool = False
    note: str = ""

    def _accepts(self, value) -> bool:
        return isinstance(value, str) and value.strip() != ""

    def _words(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class ListOf(Rule):
    """A list (`min_len` to `max_len` long, `distinct` items if asked) whose every item passes `item`."""

    item: Rule = Integer()
    min_len: int = 1
    max_len: int | None = None
    distinct: bool = False
    nullable: bool = False
    note: str = ""

    def _accepts(self, value) -> bool:
        if not isinstance(value, Sequence) or isinstance(value, str):
            return False
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            return False
        if self.distinct and len({yaml_repr(v) for v in value}) != len(value):
            return False
        return all(self.item.accepts(v) for v in value)

    def _words(self) -> str:
        if self.max_len is not None:
            size = f"{self.min_len}" if self.max_len == self.min_len else f"{self.min_len} to {self.max_len}"
            size += "-item "
        else:
            size = "non-empty " if self.min_len == 1 else f"{self.min_len}-or-more-item " if self.min_len else ""
        return f"a {size}list of {'distinct ' if self.distinct else ''}items, each {self.item.expected}"


@dataclass(frozen=True)
class AnyOf(Rule):
    """Whatever one of `rules` accepts."""

    rules: tuple = ()
    note: str = ""

    def accepts(self, value) -> bool:
        return any(r.accepts(value) for r in self.rules)

    def _words(self) -> str:
        return "; or ".join(r.expected for r in self.rules)


def first_violation(cfg, rules: Mapping[str, Rule], prefix: str = "") -> str | None:
    """The message for the first key of `rules` (a table of dotted keys, looked up under `prefix`) whose value
    the rule refuses, or None when all pass or are absent."""
    for key, rule in rules.items():
        value = lookup(cfg, prefix + key)
        if value is not _ABSENT and not rule.accepts(value):
            return rule.message(prefix + key, value)
    return None
