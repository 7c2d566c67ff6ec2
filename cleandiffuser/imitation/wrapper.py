"""PolicyWrapper: observation history + action chunking around a chunked-action policy.

    pw = PolicyWrapper(get_policy(path), n_obs=2, n_acts=8)
    pw.reset()                      # at every episode start
    action = pw.get_action(obs)     # obs = {key: array} of ONE time step, raw (as the env gives it)

Every call pushes its observation, so the policy always sees the last `n_obs` *consecutive*
observations, as in training (at an episode's start the first observation is repeated, as the
dataset pads windows). One action is returned per call; a new chunk is predicted when `n_acts`
actions of the current one have been used, from ``action_pred[To-1 : To-1+n_acts]``: the action
aligned with the newest observation and the ones after it.

:class:`BatchPolicyWrapper` does the same for several environments stepping in lockstep (batched
rollouts): one PolicyWrapper state per environment slot, and one ``predict_action`` call per step
for all slots whose chunk is used up.

    bw = BatchPolicyWrapper(policy, n_envs=10)
    bw.reset(slot)                                 # when slot starts an episode
    actions = bw([obs_a, obs_b], slots=[0, 3])     # one raw observation per live slot -> (2, A)
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..env.lockstep import check_n_envs

__all__ = ["BatchPolicyWrapper", "PolicyWrapper"]


class _ChainingPassThrough:
    """enable_chaining()/disable_chaining() of the wrapped policy, returning the wrapper (seed API)."""

    def enable_chaining(self, *args, **kwargs):
        self.policy.enable_chaining(*args, **kwargs)
        return self

    def disable_chaining(self):
        self.policy.disable_chaining()
        return self


class PolicyWrapper(_ChainingPassThrough):
    """Wraps a policy with `shape_meta`/`obs_keys`, `n_obs_steps`, `horizon` and
    `predict_action({key: (1, To, ...)}) -> {"action_pred": (1, Tp, A), ...}`.

    Args:
        n_obs: observations per prediction; must equal the policy's n_obs_steps (default).
        n_acts: actions executed per predicted chunk (default the policy's n_action_steps);
            at most horizon - n_obs + 1.
        device: where observation tensors are built (default the policy's device).
    """

    def __init__(self, policy, n_obs: int | None = None, n_acts: int | None = None, device=None):
        self.policy = policy
        To = int(policy.n_obs_steps)
        self.n_obs = To if n_obs is None else int(n_obs)
        if self.n_obs != To:
            raise ValueError(f"n_obs={self.n_obs} but the policy was trained with n_obs_steps={To}")
        self.n_acts = int(getattr(policy, "n_action_steps", 1)) if n_acts is None else int(n_acts)
        horizon = int(policy.horizon)
        if not 1 <= self.n_acts <= horizon - To + 1:
            raise ValueError(f"n_acts must be in [1, horizon - n_obs + 1 = {horizon - To + 1}], got {self.n_acts}")
        obs_meta = policy.shape_meta["obs"]
        self.obs_keys = list(getattr(policy, "obs_keys", None) or obs_meta)
        self.device = torch.device(device) if device is not None else torch.device(getattr(policy, "device", "cpu"))
        self.reset()

    def reset(self) -> None:
        """Forget the observation history and the current chunk (call at every episode start)."""
        self._history: deque = deque(maxlen=self.n_obs)
        self._chunk: np.ndarray | None = None
        self._used = 0
        self.n_predictions = 0

    def _push(self, obs: Mapping) -> None:
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing}; the policy needs {self.obs_keys}")
        frame = {}
        for k in self.obs_keys:
            v = obs[k]
            v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            frame[k] = np.array(v, copy=True)
        if not self._history:
            for _ in range(self.n_obs):
                self._history.append(frame)
        else:
            self._history.append(frame)

    def observation_history(self) -> dict[str, np.ndarray]:
        """{key: (n_obs, ...)}: what the next prediction would see (oldest first)."""
        return {k: np.stack([f[k] for f in self._history]) for k in self.obs_keys}

    def _needs_chunk(self) -> bool:
        return self._chunk is None or self._used >= self.n_acts

    def _set_chunk(self, pred) -> None:
        """Take the executed actions from one predicted chunk action_pred (Tp, A)."""
        pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        start = self.n_obs - 1
        self._chunk = pred[start:start + self.n_acts]
        self._used = 0
        self.n_predictions += 1

    def _predict(self) -> None:
        obs = {k: torch.as_tensor(v)[None].to(self.device) for k, v in self.observation_history().items()}
        self._set_chunk(self.policy.predict_action(obs)["action_pred"][0])

    def _next_action(self) -> np.ndarray:
        action = self._chunk[self._used]
        self._used += 1
        return action

    def get_action(self, obs: Mapping) -> np.ndarray:
        """Push one raw observation and return the next action (A,)."""
        self._push(obs)
        if self._needs_chunk():
            self._predict()
        return self._next_action()

    __call__ = get_action



class BatchPolicyWrapper(_ChainingPassThrough):
    """PolicyWrapper for `n_envs` environment slots stepping in lockstep.

    Each slot keeps its own observation history (padded at its episode start) and chunk, exactly
    as a PolicyWrapper would; a call pushes one observation per given slot, and the slots whose
    chunk is used up (each after ITS n_acts actions, as episodes start at different steps) are
    replanned together in ONE batched ``predict_action`` call. With a deterministic policy every
    slot gets the actions a PolicyWrapper of its own would give.

    Args:
        policy, n_obs, n_acts, device: as for PolicyWrapper.
        n_envs: number of slots (0 .. n_envs-1).
    """

    def __init__(self, policy, n_envs: int, n_obs: int | None = None, n_acts: int | None = None, device=None):
        check_n_envs(n_envs)
        self.policy = policy
        self.slots = [PolicyWrapper(policy, n_obs=n_obs, n_acts=n_acts, device=device) for _ in range(n_envs)]
        first = self.slots[0]
        self.n_envs, self.n_obs, self.n_acts = n_envs, first.n_obs, first.n_acts
        self.obs_keys, self.device = first.obs_keys, first.device
        self.n_calls = 0  # predict_action calls (batched)

    def reset(self, slot: int | None = None) -> None:
        """Forget one slot's history and chunk (at its episode start); all slots when None."""
        for w in self.slots if slot is None else [self.slots[self._index(slot)]]:
            w.reset()

    def _index(self, slot) -> int:
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.n_envs:
            raise IndexError(f"slot {slot!r} is not in [0, {self.n_envs})")
        return int(slot)

    def observation_history(self, slot: int) -> dict[str, np.ndarray]:
        """{key: (n_obs, ...)} of one slot (see PolicyWrapper.observation_history)."""
        return self.slots[self._index(slot)].observation_history()

    @property
    def n_predictions(self) -> list[int]:
        """Chunks predicted per slot since its last reset."""
        return [w.n_predictions for w in self.slots]

    def get_actions(self, obs: Sequence[Mapping], slots: Sequence[int] | None = None) -> np.ndarray:
        """Push ``obs[j]`` (one raw observation) into slot ``slots[j]`` (default: slot j) and return
        the next actions (len(obs), A); the other slots are left as they are."""
        slots = list(range(len(obs))) if slots is None else [self._index(s) for s in slots]
        if len(slots) != len(obs):
            raise ValueError(f"{len(obs)} observations for {len(slots)} slots")
        if len(set(slots)) != len(slots):
            raise ValueError(f"slots must be distinct, got {slots}")
        wrappers = [self.slots[s] for s in slots]
        for w, o in zip(wrappers, obs):
            w._push(o)
        stale = [w for w in wrappers if w._needs_chunk()]
        if stale:
            self._predict(stale)
        return np.stack([w._next_action() for w in wrappers]) if wrappers else np.zeros((0,))

    __call__ = get_actions

    def _predict(self, wrappers: list[PolicyWrapper]) -> None:
        hist = [w.observation_history() for w in wrappers]
        obs = {k: torch.as_tensor(np.stack([h[k] for h in hist])).to(self.device) for k in self.obs_keys}
        pred = self.policy.predict_action(obs)["action_pred"]
        if len(pred) != len(wrappers):
            raise ValueError(f"predict_action returned {len(pred)} chunks for a batch of {len(wrappers)}")
        for w, p in zip(wrappers, pred):
            w._set_chunk(p)
        self.n_calls += 1

