"""Action-chunk sampling for imitation learning, following Diffusion Policy's conventions.

A training sample is a window of ``horizon`` (Tp) consecutive steps of one episode; the policy
sees the first ``n_obs_steps`` (To) observations of the window and predicts all Tp actions, of
which ``pred[To-1 : To-1+Ta]`` (Ta = ``n_action_steps``) are executed. Windows may start up to
``pad_before`` steps before an episode's first step and end up to ``pad_after`` steps after its
last; the missing steps are filled by repeating the episode's first / last frame, as DP's
``SequenceSampler`` does. Windows never cross episode boundaries.

Index table (one row per window), as DP's ``create_indices``::

    buffer_start, buffer_end   rows [buffer_start, buffer_end) of the concatenated data
    sample_start, sample_end   where those rows go inside the window [0, horizon)

Window position ``j`` therefore reads buffer row
``clip(buffer_start - sample_start + j, buffer_start, buffer_end - 1)``, which is how
:class:`ChunkedDataset` gathers a whole batch with one indexing op per key.

Normalization ("limits", DP's default): every low-dimensional key and the action are mapped
per dimension from their [min, max] onto [-1, 1] (:class:`MinMaxNormalizer`); images
(uint8 [0, 255]) onto [-1, 1] (:class:`ImageNormalizer`). :class:`LinearNormalizer` keeps one
normalizer per key and saves as a flat dict of tensors (safetensors-friendly).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .dataset_utils import TensorBatchSampler
from .normalizers import (
    BaseNormalizer,
    GaussianNormalizer,
    ImageNormalizer,
    MinMaxNormalizer,
)

__all__ = [
    "sequence_indices",
    "ChunkIndex",
    "sample_sequence",
    "actions_to_delta",
    "delta_to_actions",
    "LinearNormalizer",
    "ChunkedDataset",
    "ChunkBatchSampler",
]


# --------------------------------------------------------------------------- window indices
def _check_episode_ends(episode_ends) -> np.ndarray:
    ends = np.asarray(episode_ends)
    if ends.ndim != 1 or (ends.size and ends.dtype.kind not in "iu"):
        raise ValueError(f"episode_ends must be a 1-D integer array, got dtype {ends.dtype} shape {ends.shape}")
    ends = ends.astype(np.int64)
    if ends.size and (ends[0] < 0 or np.any(np.diff(ends) < 0)):
        raise ValueError(f"episode_ends must be non-negative and non-decreasing, got {ends[:10].tolist()}")
    return ends


def sequence_indices(
    episode_ends,
    horizon: int,
    pad_before: int = 0,
    pad_after: int = 0,
    episode_mask: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """All windows of length ``horizon`` as an (N, 4) int64 array of
    ``(buffer_start, buffer_end, sample_start, sample_end)`` rows (see the module docstring).

    ``pad_before`` / ``pad_after`` are clipped to ``[0, horizon - 1]`` (as DP does). An episode
    of length L yields ``L - horizon + pad_before + pad_after + 1`` windows (none if that is
    <= 0; an empty episode never yields one), in time order; episodes appear in order.
    ``episode_mask`` (bool per episode) skips the episodes set to False (e.g. a
    train/validation split).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    ends = _check_episode_ends(episode_ends)
    pad_before = int(min(max(pad_before, 0), horizon - 1))
    pad_after = int(min(max(pad_after, 0), horizon - 1))
    if episode_mask is not None:
        episode_mask = np.asarray(episode_mask, dtype=bool)
        if episode_mask.shape != ends.shape:
            raise ValueError(f"episode_mask has shape {episode_mask.shape}, expected {ends.shape}")
    rows = []
    start = 0
    for i, end in enumerate(ends.tolist()):
        length = end - start
        if length > 0 and (episode_mask is None or episode_mask[i]):  # empty episodes: no windows
            offsets = np.arange(-pad_before, length - horizon + pad_after + 1, dtype=np.int64)  # window start within episode
            if offsets.size:
                b_start = np.maximum(offsets, 0)
                b_end = np.minimum(offsets + horizon, length)
                rows.append(np.stack([b_start + start, b_end + start, b_start - offsets, b_end - offsets], axis=1))
        start = end
    if not rows:
        return np.zeros((0, 4), dtype=np.int64)
    return np.concatenate(rows, axis=0).astype(np.int64)


@dataclass(frozen=True)
class ChunkIndex:
    """The windows of a set of episodes: ``indices`` (N, 4) as from :func:`sequence_indices`,
    plus the window ``horizon`` and the episode each window belongs to."""

    indices: np.ndarray
    horizon: int
    episode_ids: np.ndarray

    @classmethod
    def from_episode_ends(cls, episode_ends, horizon: int, pad_before: int = 0, pad_after: int = 0,
                          episode_mask=None) -> ChunkIndex:
        ends = _check_episode_ends(episode_ends)
        idx = sequence_indices(ends, horizon, pad_before, pad_after, episode_mask)
        episode_ids = np.searchsorted(ends, idx[:, 0], side="right").astype(np.int64)
        return cls(idx, int(horizon), episode_ids)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def buffer_start(self) -> np.ndarray:
        return self.indices[:, 0]

    @property
    def buffer_end(self) -> np.ndarray:
        return self.indices[:, 1]

    @property
    def sample_start(self) -> np.ndarray:
        return self.indices[:, 2]

    @property
    def sample_end(self) -> np.ndarray:
        return self.indices[:, 3]

    def gather_index(self) -> np.ndarray:
        """(N, horizon) buffer row read at each window position (padding repeats the
        first / last frame)."""
        j = np.arange(self.horizon, dtype=np.int64)[None]
        bs, be, ss = self.indices[:, :1], self.indices[:, 1:2], self.indices[:, 2:3]
        return np.clip(bs - ss + j, bs, be - 1)

    def pad_mask(self) -> np.ndarray:
        """(N, horizon) bool: True at padded positions (outside ``[sample_start, sample_end)``)."""
        j = np.arange(self.horizon, dtype=np.int64)[None]
        return (j < self.indices[:, 2:3]) | (j >= self.indices[:, 3:4])


def sample_sequence(array, window, horizon: int) -> np.ndarray:
    """One window of ``array`` (the concatenated data, axis 0 = time) for one index row
    ``(buffer_start, buffer_end, sample_start, sample_end)``: copy the rows, then fill
    positions before ``sample_start`` with the first and from ``sample_end`` on with the last.
    (The per-item reference of what :class:`ChunkedDataset` gathers in batches.)"""
    bs, be, ss, se = (int(v) for v in window)
    rows = np.asarray(array[bs:be])
    out = np.empty((horizon,) + rows.shape[1:], dtype=rows.dtype)
    out[ss:se] = rows
    out[:ss] = rows[0]
    out[se:] = rows[-1]
    return out


# --------------------------------------------------------------------------- delta actions
def _delta_dims(dims, action_dim: int) -> np.ndarray:
    mask = np.zeros(action_dim, dtype=bool)
    if dims is None:
        mask[:] = True
    else:
        mask[np.asarray(list(dims), dtype=np.int64)] = True
    return mask


def actions_to_delta(actions: np.ndarray, episode_ends=None, delta_dims: Sequence[int] | None = None) -> np.ndarray:
    """Absolute actions (N, A) -> deltas ``a[t] - a[t-1]`` within each episode.

    The first step of every episode gets a zero delta (no previous action), so deltas never
    mix episodes. ``episode_ends`` defaults to a single episode. ``delta_dims`` (default: all)
    selects the dims converted; the others (e.g. a gripper command) stay absolute.
    """
    a = np.asarray(actions)
    if a.ndim != 2:
        raise ValueError(f"actions must be (N, A), got shape {a.shape}")
    ends = _check_episode_ends([len(a)] if episode_ends is None else episode_ends)
    if ends.size and ends[-1] != len(a):
        raise ValueError(f"episode_ends[-1] = {ends[-1]} but there are {len(a)} actions")
    prev = np.empty_like(a)
    prev[1:] = a[:-1]
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    starts = starts[starts < len(a)]
    prev[starts] = a[starts]
    mask = _delta_dims(delta_dims, a.shape[1])
    return np.where(mask, a - prev, a)


def delta_to_actions(delta, previous_action, delta_dims: Sequence[int] | None = None):
    """Inverse of :func:`actions_to_delta` for one chunk: ``(..., T, A)`` deltas and the
    absolute action executed just before the chunk ``(..., A)`` -> absolute actions
    ``previous + cumsum(delta)`` on ``delta_dims`` (other dims are returned as given).
    numpy or torch."""
    if isinstance(delta, torch.Tensor):
        prev = torch.as_tensor(previous_action, dtype=delta.dtype, device=delta.device)
        mask = torch.as_tensor(_delta_dims(delta_dims, delta.shape[-1]), device=delta.device)
        return torch.where(mask, prev.unsqueeze(-2) + delta.cumsum(dim=-2), delta)
    delta = np.asarray(delta)
    prev = np.asarray(previous_action)
    mask = _delta_dims(delta_dims, delta.shape[-1])
    return np.where(mask, prev[..., None, :] + np.cumsum(delta, axis=-2), delta)


# --------------------------------------------------------------------------- normalizer dict
_KINDS: dict[str, type] = {"limits": MinMaxNormalizer, "gaussian": GaussianNormalizer, "image": ImageNormalizer}


def _kind_of(norm: BaseNormalizer) -> str:
    for kind, cls in _KINDS.items():
        if type(norm) is cls:
            return kind
    raise TypeError(f"LinearNormalizer cannot save a {type(norm).__name__}; supported: "
                    + ", ".join(f"{c.__name__} ({k!r})" for k, c in _KINDS.items()))


class LinearNormalizer:
    """A dict of per-key normalizers (like Diffusion Policy's ``LinearNormalizer``).

    ``normalize`` / ``unnormalize`` take a (possibly nested) dict and transform every leaf
    whose key has a normalizer (e.g. ``{"obs": {"img": ..., "state": ...}, "action": ...}``);
    a leaf without one raises KeyError. ``norm["action"].unnormalize(x)`` works on one key.

    ``state_dict()`` is a flat ``{"<key>.<kind>.<param>": tensor}`` with kind one of
    ``limits`` (MinMaxNormalizer), ``gaussian`` (GaussianNormalizer) or ``image``
    (ImageNormalizer, stored as an empty marker tensor), so it can go straight into a
    safetensors file and be rebuilt by :meth:`from_state_dict`.
    """

    def __init__(self, normalizers: Mapping[str, BaseNormalizer] | None = None):
        self._norms: dict[str, BaseNormalizer] = {}
        for k, v in (normalizers or {}).items():
            self[k] = v

    @classmethod
    def fit(cls, data: Mapping[str, Any], mode: str = "limits", image_keys: Sequence[str] = ()) -> LinearNormalizer:
        """Fit one normalizer per key of ``data`` ({key: (N, ...)}): ``mode`` "limits" (min/max
        -> [-1, 1]) or "gaussian" for low-dim keys, ImageNormalizer for ``image_keys``."""
        if mode not in ("limits", "gaussian"):
            raise ValueError(f"mode must be 'limits' or 'gaussian', got {mode!r}")
        out = cls()
        for k, v in data.items():
            if k in image_keys:
                out[k] = ImageNormalizer()
            else:
                out[k] = _KINDS[mode](v)
        return out

    def __setitem__(self, key: str, norm: BaseNormalizer) -> None:
        if not isinstance(norm, BaseNormalizer):
            raise TypeError(f"normalizer for {key!r} must be a BaseNormalizer, got {type(norm).__name__}")
        self._norms[str(key)] = norm

    def __getitem__(self, key: str) -> BaseNormalizer:
        try:
            return self._norms[key]
        except KeyError:
            raise KeyError(f"no normalizer for key {key!r}; keys: {sorted(self._norms)}") from None

    def __contains__(self, key) -> bool:
        return key in self._norms

    def __len__(self) -> int:
        return len(self._norms)

    def __iter__(self) -> Iterator[str]:
        return iter(self._norms)

    def keys(self):
        return self._norms.keys()

    def items(self):
        return self._norms.items()

    def _apply(self, x, fn: str, **kw):
        if not isinstance(x, Mapping):
            raise TypeError("LinearNormalizer.normalize/unnormalize take a dict; use norm[key] for one array")
        out = {}
        for k, v in x.items():
            if isinstance(v, Mapping):
                out[k] = self._apply(v, fn, **kw)
            else:
                out[k] = getattr(self[k], fn)(v, **kw)
        return out

    def normalize(self, x: Mapping[str, Any]) -> dict:
        return self._apply(x, "normalize")

    def unnormalize(self, x: Mapping[str, Any]) -> dict:
        return self._apply(x, "unnormalize")

    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for k, norm in self._norms.items():
            kind = _kind_of(norm)
            params = norm.state_dict()
            if not params:
                state[f"{k}.{kind}._"] = torch.zeros(0)
            for p, v in params.items():
                state[f"{k}.{kind}.{p}"] = torch.as_tensor(np.array(v, copy=True))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the contents with the normalizers described by ``state`` (see class doc)."""
        grouped: dict[str, tuple[str, dict]] = {}
        for name, value in state.items():
            parts = str(name).rsplit(".", 2)
            if len(parts) != 3 or parts[1] not in _KINDS:
                raise KeyError(f"LinearNormalizer.load_state_dict: bad entry {name!r}; expected "
                               f"'<key>.<kind>.<param>' with kind in {sorted(_KINDS)}")
            key, kind, param = parts
            prev_kind, params = grouped.setdefault(key, (kind, {}))
            if prev_kind != kind:
                raise KeyError(f"LinearNormalizer.load_state_dict: key {key!r} has entries of kinds {prev_kind!r} and {kind!r}")
            if param != "_":
                params[param] = value
        norms = {}
        for key, (kind, params) in grouped.items():
            cls = _KINDS[kind]
            norms[key] = cls() if cls is ImageNormalizer else cls.from_state_dict(params)
        self._norms = norms

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> LinearNormalizer:
        out = cls()
        out.load_state_dict(state)
        return out

    def __repr__(self) -> str:
        return "LinearNormalizer(" + ", ".join(f"{k}={type(v).__name__}" for k, v in self._norms.items()) + ")"


# --------------------------------------------------------------------------- dataset
def _lookup(ep: Mapping[str, Any], key: str, i: int):
    obs = ep.get("obs")
    if isinstance(obs, Mapping) and key in obs:
        return obs[key]
    if key in ep and not isinstance(ep[key], Mapping):
        return ep[key]
    avail = sorted(k for k, v in ep.items() if not isinstance(v, Mapping))
    if isinstance(obs, Mapping):
        avail += [f"obs/{k}" for k in sorted(obs)]
    raise KeyError(f"episode {i} has no key {key!r}; available: {avail}")


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _to_uint8_images(x: np.ndarray, key: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iuf":
        raise ValueError(f"image key {key!r} has dtype {x.dtype}; expected uint8 or float")
    scale = 1.0 if (x.size and float(x.max()) > 1.0 + 1e-6) else 255.0  # [0, 255] or [0, 1]
    out = np.empty(x.shape, dtype=np.uint8)
    for s in range(0, x.shape[0], 1024):  # in blocks: no full-size float temporaries
        out[s:s + 1024] = np.clip(np.rint(x[s:s + 1024].astype(np.float32) * scale), 0, 255)
    return out


class _ChunkTables:
    """Flat per-key buffers + the window table; ``batch(idx)`` gathers a batch of windows."""

    def __init__(self, buffers: dict[str, torch.Tensor], image_keys: set, table: torch.Tensor,
                 horizon: int, n_obs_steps: int, obs_keys: list[str], image_norm: bool,
                 action_pad: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.buffers = buffers
        self.image_keys = image_keys
        self.table = table
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.obs_keys = obs_keys
        self.image_norm = image_norm
        # (value (A,), dims mask (A,)): what padded steps after an episode's end hold on those dims
        self.action_pad = action_pad
        self._img = ImageNormalizer()
        self._j = torch.arange(horizon, device=table.device)

    def to(self, device) -> _ChunkTables:
        device = torch.device(device)
        pad = None if self.action_pad is None else tuple(t.to(device) for t in self.action_pad)
        return _ChunkTables({k: v.to(device) for k, v in self.buffers.items()}, self.image_keys,
                            self.table.to(device), self.horizon, self.n_obs_steps, self.obs_keys,
                            self.image_norm, pad)

    def batch(self, idx: torch.Tensor) -> dict:
        rows = self.table.index_select(0, idx.to(self.table.device))  # (B, 4)
        bs, be, ss, se = (rows[:, i:i + 1] for i in range(4))
        g = torch.minimum(torch.maximum(bs - ss + self._j, bs), be - 1)  # (B, Tp)
        g_obs = g[:, : self.n_obs_steps]
        obs = {}
        for k in self.obs_keys:
            x = self.buffers[k][g_obs]
            if k in self.image_keys and self.image_norm:
                x = self._img.normalize(x)
            obs[k] = x
        action = self.buffers["action"][g]
        if self.action_pad is not None:
            value, dims = self.action_pad
            pad = (self._j >= se)[..., None] & dims  # (B, Tp, A)
            action = torch.where(pad, value, action)
        return {"obs": obs, "action": action}


class ChunkedDataset(torch.utils.data.Dataset):
    """Windows of demonstrations as (observation history, action chunk) pairs.

    Args:
        episodes: list of episode dicts. Observations are looked up in ``ep["obs"][key]``
            (robomimic episodes, :func:`read_robomimic_hdf5`) or ``ep[key]`` (replay-buffer
            episodes, :func:`read_zarr_replay`); arrays are (T, ...).
        obs_keys: observation keys to return.
        horizon: Tp, window length (actions predicted per sample). Default 16.
        n_obs_steps: To, observations per sample (the window's first To steps). Default 2.
        n_action_steps: Ta, actions executed per chunk; only sets the default ``pad_after``
            and is checked against ``To - 1 + Ta <= Tp``. Default 8.
        pad_before, pad_after: default ``To - 1`` and ``Ta - 1`` (DP's choice).
        normalizer: "limits" (default: min/max -> [-1, 1] per dim for low-dim keys and the
            action, images -> [-1, 1]), "gaussian" (low-dim keys standardized), a fitted
            :class:`LinearNormalizer` with keys ``obs_keys + ["action"]``, or None (raw values;
            images stay uint8).
        action_key: key of the actions in the episodes (default "actions" if present, else
            "action"). Batches always call it "action" (and so does the normalizer).
        action_mode: "abs" (as stored) or "delta": each step's action minus the previous
            absolute action in the same episode (zero at an episode's first step; see
            :func:`actions_to_delta`). Padded steps after an episode's end get a zero delta
            (the delta form of repeating the last absolute action). Undo with
            :func:`delta_to_actions` given the last executed absolute action.
        delta_dims: the action dims made relative in "delta" mode (default all), e.g.
            ``range(6)`` to keep a 7th gripper dim absolute.
        action_transform: optional ``f(actions (N, A)) -> (N, A')`` applied to the stored actions
            before "delta" mode and the normalizer (e.g. :class:`cleandiffuser.imitation.actions.
            ActionTransform`: axis-angle -> rotation-6d); batches, the normalizer and
            :attr:`action_dim` then hold the transformed actions (undo it after unnormalizing).
        image_keys: obs keys holding images (T, H, W, C); default: obs arrays with 4 dims and
            1, 3 or 4 channels last. Images are stored as uint8 (float images are read as
            [0, 255] when any value exceeds 1, else [0, 1]) and returned channels-first
            (To, C, H, W).
        episode_mask: optional bool per episode; False episodes contribute no windows (e.g. a
            validation split; the normalizer is still fitted on all episodes).

    Items: ``{"obs": {key: (To, ...) tensor}, "action": (Tp, A) float32 tensor}``. For
    training loops use :meth:`sampler` (or :meth:`gather` with your own indices): a batch is
    gathered from the window table with one indexing op per key, no per-item Python.
    """

    def __init__(
        self,
        episodes: Sequence[Mapping[str, Any]],
        obs_keys: Sequence[str],
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        pad_before: int | None = None,
        pad_after: int | None = None,
        normalizer: LinearNormalizer | str | None = "limits",
        *,
        action_key: str | None = None,
        action_mode: str = "abs",
        delta_dims: Sequence[int] | None = None,
        action_transform: Callable[[np.ndarray], np.ndarray] | None = None,
        image_keys: Sequence[str] | None = None,
        episode_mask: Sequence[bool] | None = None,
    ):
        episodes = list(episodes)
        if not episodes:
            raise ValueError("ChunkedDataset: no episodes given")
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"n_obs_steps must be in [1, horizon={horizon}], got {n_obs_steps}")
        if n_action_steps < 1 or n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(f"need 1 <= n_action_steps and n_obs_steps - 1 + n_action_steps <= horizon; "
                             f"got To={n_obs_steps}, Ta={n_action_steps}, Tp={horizon}")
        if action_mode not in ("abs", "delta"):
            raise ValueError(f"action_mode must be 'abs' or 'delta', got {action_mode!r}")
        self.obs_keys = [str(k) for k in obs_keys]
        self.horizon, self.n_obs_steps, self.n_action_steps = int(horizon), int(n_obs_steps), int(n_action_steps)
        self.pad_before = self.n_obs_steps - 1 if pad_before is None else int(pad_before)
        self.pad_after = self.n_action_steps - 1 if pad_after is None else int(pad_after)
        self.action_mode = action_mode
        self.delta_dims = None if delta_dims is None else [int(d) for d in delta_dims]

        if action_key is None:
            action_key = "actions" if "actions" in episodes[0] else "action"
        if action_key not in episodes[0]:
            raise KeyError(f"episode 0 has no action key {action_key!r}; keys: {sorted(episodes[0])}")
        if action_key in self.obs_keys or "action" in self.obs_keys:
            raise ValueError(f"obs_keys must not contain the action key ({action_key!r} / 'action')")
        self.action_key = action_key

        # concatenate episodes
        lengths, acts, obs = [], [], {k: [] for k in self.obs_keys}
        for i, ep in enumerate(episodes):
            a = _np(ep[action_key]) if action_key in ep else None
            if a is None:
                raise KeyError(f"episode {i} has no action key {action_key!r}; keys: {sorted(ep)}")
            a = a[:, None] if a.ndim == 1 else a
            if a.ndim != 2:
                raise ValueError(f"episode {i}: actions must be (T, A), got shape {a.shape}")
            for k in self.obs_keys:
                o = _np(_lookup(ep, k, i))
                if o.ndim < 1 or o.shape[0] != a.shape[0]:
                    raise ValueError(f"episode {i}: obs {k!r} has shape {o.shape} but the actions have {a.shape[0]} steps")
                obs[k].append(o)
            lengths.append(a.shape[0])
            acts.append(a)
        self.episode_ends = np.cumsum(lengths).astype(np.int64)
        try:
            action = np.concatenate(acts, axis=0).astype(np.float32)
            flat = {k: np.concatenate(v, axis=0) for k, v in obs.items()}
        except ValueError as e:
            raise ValueError(f"episodes have inconsistent per-step shapes: {e}") from None
        if action_transform is not None:
            n = len(action)
            action = np.asarray(action_transform(action), dtype=np.float32)
            if action.ndim != 2 or len(action) != n:
                raise ValueError(f"action_transform must map (N, A) actions to (N, A'), got shape {action.shape} "
                                 f"for {n} actions")
        if action_mode == "delta":
            action = actions_to_delta(action, self.episode_ends, self.delta_dims).astype(np.float32)

        if image_keys is None:
            image_keys = [k for k, v in flat.items() if v.ndim == 4 and v.shape[-1] in (1, 3, 4)]
        unknown = [k for k in image_keys if k not in flat]
        if unknown:
            raise KeyError(f"image_keys {unknown} are not in obs_keys {self.obs_keys}")
        self.image_keys = [str(k) for k in image_keys]
        for k in self.image_keys:
            if flat[k].ndim != 4:
                raise ValueError(f"image key {k!r} must be (T, H, W, C), got shape {flat[k].shape}")
            flat[k] = np.ascontiguousarray(np.moveaxis(_to_uint8_images(flat[k], k), -1, 1))  # (N, C, H, W)
        self._raw = {**{k: v for k, v in flat.items() if k not in self.image_keys}, "action": action}
        self._images = {k: torch.from_numpy(flat[k]) for k in self.image_keys}

        self.index = ChunkIndex.from_episode_ends(self.episode_ends, self.horizon, self.pad_before,
                                                  self.pad_after, episode_mask)
        if len(self.index) == 0:
            longest = int(np.diff(np.concatenate([[0], self.episode_ends])).max())
            raise ValueError(
                f"ChunkedDataset: no windows: an episode needs at least horizon - pad_before - pad_after = "
                f"{self.horizon - min(self.pad_before, self.horizon - 1) - min(self.pad_after, self.horizon - 1)} "
                f"steps (the longest episode has {longest})")
        if isinstance(normalizer, str):
            normalizer = LinearNormalizer.fit(
                {**{k: v for k, v in self._raw.items()}, **{k: flat[k][:1] for k in self.image_keys}},
                mode=normalizer, image_keys=self.image_keys)
        self.set_normalizer(normalizer)

    # ----------------------------------------------------------------- normalizer
    def set_normalizer(self, normalizer: LinearNormalizer | None) -> None:
        """Use ``normalizer`` (None: raw values) for everything returned from now on."""
        if normalizer is not None:
            if not isinstance(normalizer, LinearNormalizer):
                raise TypeError(f"normalizer must be a LinearNormalizer, 'limits', 'gaussian' or None, "
                                f"got {type(normalizer).__name__}")
            missing = [k for k in self.obs_keys + ["action"] if k not in normalizer]
            if missing:
                raise KeyError(f"normalizer has no entry for {missing}; it has {sorted(normalizer.keys())}")
            for k in self.image_keys:
                if not isinstance(normalizer[k], ImageNormalizer):
                    raise TypeError(f"image key {k!r} needs an ImageNormalizer, got {type(normalizer[k]).__name__}")
        self.normalizer = normalizer
        buffers: dict[str, torch.Tensor] = {}
        for k, v in self._raw.items():
            x = v if normalizer is None else normalizer[k].normalize(v)
            buffers[k] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        buffers.update(self._images)
        action_pad = None
        if self.action_mode == "delta":
            # steps padded after an episode's end hold a zero delta (normalized like the data)
            zero = np.zeros((1, self.action_dim), dtype=np.float32)
            value = zero if normalizer is None else normalizer["action"].normalize(zero)
            dims = _delta_dims(self.delta_dims, self.action_dim)
            action_pad = (torch.from_numpy(np.asarray(value, dtype=np.float32)[0]), torch.from_numpy(dims))
        self._tables = _ChunkTables(
            buffers, set(self.image_keys), torch.from_numpy(self.index.indices), self.horizon,
            self.n_obs_steps, self.obs_keys, image_norm=normalizer is not None, action_pad=action_pad,
        )

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.index)

    @property
    def action_dim(self) -> int:
        return int(self._raw["action"].shape[1])

    def gather(self, idx) -> dict:
        """A batch of windows ``idx`` (LongTensor / array of window numbers):
        ``{"obs": {key: (B, To, ...)}, "action": (B, Tp, A)}``."""
        return self._tables.batch(torch.as_tensor(idx, dtype=torch.long))

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        b = self.gather(torch.tensor([i % n]))
        return {"obs": {k: v[0] for k, v in b["obs"].items()}, "action": b["action"][0]}

    def tensors(self) -> dict:
        """Every window materialized: ``{"obs": {key: (N, To, ...)}, "action": (N, Tp, A)}``
        (for :class:`TensorBatchSampler`; fine for low-dim data, memory-hungry with images:
        prefer :meth:`sampler`)."""
        return self.gather(torch.arange(len(self)))

    def sampler(self, batch_size: int, device: str | torch.device = "cpu",
                generator: torch.Generator | int | None = None) -> ChunkBatchSampler:
        """Random batches (with replacement) gathered on ``device``; see :class:`ChunkBatchSampler`."""
        return ChunkBatchSampler(self, batch_size, device=device, generator=generator)


class ChunkBatchSampler(TensorBatchSampler):
    """Uniform random batches of windows of a :class:`ChunkedDataset`, gathered on ``device``
    (the dataset's buffers and normalization are copied there once, at construction). Same
    interface as
    :class:`TensorBatchSampler`: ``sample()``, infinite iteration, ``state_dict()`` /
    ``load_state_dict()`` of the generator."""

    def __init__(self, dataset: ChunkedDataset, batch_size: int, device: str | torch.device = "cpu",
                 generator: torch.Generator | int | None = None):
        if len(dataset) == 0:
            raise ValueError("ChunkBatchSampler: the dataset has no windows (episodes shorter than the horizon?)")
        super().__init__({"window": torch.arange(len(dataset))}, batch_size, device=device, generator=generator)
        self.dataset = dataset
        self._tables = dataset._tables.to(self.device)

    def sample(self) -> dict:
        return self._tables.batch(self.sample_indices())
