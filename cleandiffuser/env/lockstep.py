"""Lockstep rollouts: several environments step side by side and one *batch policy* acts on all
live ones per step (one network call for many episodes instead of one per episode).

A batch policy is ``policy(obs_list, slots) -> actions`` (one action per entry; ``slots[j]`` is
the environment slot ``obs_list[j]`` comes from, so a stateful policy keeps per-slot state) with
an optional ``policy.reset(slot)``, called whenever a slot starts a new episode.
:func:`unbatched` turns a per-step ``policy_fn(obs) -> action`` into a batch policy of one slot.

:func:`run_lockstep` runs episodes ``0 .. n-1`` on ``len(envs)`` environments: each slot takes
the next pending episode when its current one ends (or leaves the batch when none is left).
Episode ``i`` is defined by ``start(env, i)`` alone (its own reset seed), so for a deterministic
policy the records do not depend on the number of environments.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["Episode", "as_batch_policy", "check_n_envs", "run_lockstep", "unbatched"]


class Episode(Protocol):
    """One running episode in one environment."""

    obs: Any  # what the policy acts on next

    def step(self, action) -> bool:
        """Apply one action; True when the episode is over."""

    def record(self) -> dict:
        """The finished episode's record."""


def check_n_envs(n_envs) -> int:
    """``n_envs`` as an int >= 1 (a clear error otherwise)."""
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be an integer >= 1, got {n_envs!r}")
    return n_envs


class _Unbatched:
    def __init__(self, policy_fn: Callable, reset_fn: Callable[[], None] | None):
        self.policy_fn, self.reset_fn = policy_fn, reset_fn

    def __call__(self, obs_list: Sequence, slots: Sequence[int]) -> list:
        if len(obs_list) != 1:  # its state (history, chunk) belongs to one episode
            raise ValueError(f"a per-step policy_fn serves one environment, got {len(obs_list)}")
        return [self.policy_fn(obs_list[0])]

    def reset(self, slot: int) -> None:
        if self.reset_fn is not None:
            self.reset_fn()


def unbatched(policy_fn: Callable, reset_fn: Callable[[], None] | None = None):
    """A per-step ``policy_fn(obs) -> action`` as a one-slot batch policy; ``reset_fn`` (default
    ``policy_fn.reset`` if it exists) is called at every episode start."""
    return _Unbatched(policy_fn, reset_fn if reset_fn is not None else getattr(policy_fn, "reset", None))


def as_batch_policy(policy_fn: Callable, batched: bool, n_envs, reset_fn: Callable[[], None] | None = None):
    """(batch policy, n_envs) for an evaluator taking either kind of policy: a batch policy as it is, a
    per-step ``policy_fn`` through :func:`unbatched` (one environment only: it keeps one episode's state)."""
    n_envs = check_n_envs(n_envs)
    if batched:
        return policy_fn, n_envs
    if n_envs != 1:
        raise ValueError("n_envs > 1 needs a batch policy (batched=True): a per-step policy_fn keeps one "
                         "episode's state")
    return unbatched(policy_fn, reset_fn), n_envs


def run_lockstep(envs: Sequence, n_episodes: int, start: Callable[[Any, int], Episode], policy,
                 on_done: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Run episodes ``0 .. n_episodes-1`` on ``envs`` in lockstep with the batch policy ``policy``.

    ``start(env, i)`` resets ``env`` to episode ``i`` and returns its :class:`Episode`. Episodes are
    started in index order; each step calls ``policy`` once on the live slots (ascending). Returns the
    records in episode order; ``on_done(i, record)`` is called as each episode ends.
    """
    n = int(n_episodes)
    if n < 0:
        raise ValueError(f"n_episodes must be >= 0, got {n_episodes}")
    if not envs and n:
        raise ValueError("run_lockstep needs at least one environment")
    reset = getattr(policy, "reset", None)
    records: list = [None] * n
    pending = iter(range(n))
    live: dict[int, tuple[int, Episode]] = {}  # slot -> (episode index, episode)

    def refill(slot: int) -> None:
        i = next(pending, None)
        if i is None:
            live.pop(slot, None)  # nothing left: the slot leaves the batch
            return
        if reset is not None:
            reset(slot)
        live[slot] = (i, start(envs[slot], i))

    for slot in range(min(len(envs), n)):
        refill(slot)
    while live:
        slots = sorted(live)
        actions = policy([live[s][1].obs for s in slots], slots)
        if len(actions) != len(slots):
            raise ValueError(f"the batch policy returned {len(actions)} actions for {len(slots)} observations")
        for slot, action in zip(slots, actions):
            i, ep = live[slot]
            if ep.step(action):
                records[i] = ep.record()
                if on_done is not None:
                    on_done(i, records[i])
                refill(slot)
    return records
