"""Checkpoints without pickle: tensors in safetensors, everything else as JSON metadata.

Also records constructor arguments of networks and models (`RecordsInit`), so a checkpoint
holds what is needed to rebuild the object (`build_from_config`). Rebuilding constructs only
classes on an allowlist: every `RecordsInit` subclass defined inside this package registers itself
as it is defined, and a user's own network class joins with `@register_buildable`. Nothing else a
checkpoint names is imported, called or constructed, and constructor arguments must be JSON values.
"""
import functools
import inspect
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _jsonable(value: Any):
    """Convert constructor arguments to JSON; raises TypeError for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().tolist()}
    if isinstance(value, RecordsInit):
        return value.init_config()
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or that asks for something loading will not do."""


# "module.QualName" -> class: the only classes build_from_config constructs
_BUILDABLE: dict[str, type] = {}

# the package's buildable classes live in these subpackages; importing them registers the classes
_BUILDABLE_PACKAGES = ("cleandiffuser.diffusion", "cleandiffuser.nn_diffusion", "cleandiffuser.nn_condition")


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_buildable(cls: type) -> type:
    """Allow `build_from_config` (and so `load_model`) to construct `cls` from a checkpoint; a class decorator
    for users' own networks and conditions. The class must record its constructor arguments (subclass a
    library base class such as BaseNNDiffusion or BaseNNCondition)."""
    if not (isinstance(cls, type) and issubclass(cls, RecordsInit)):
        raise TypeError(f"register_buildable takes a RecordsInit subclass (e.g. of BaseNNDiffusion), got {cls!r}")
    _BUILDABLE[_class_path(cls)] = cls
    return cls


def buildable_classes() -> dict[str, type]:
    """The allowlist: every class a checkpoint may name, by its recorded path."""
    _import_buildable_packages()
    return dict(_BUILDABLE)


def _import_buildable_packages() -> None:
    import importlib

    for name in _BUILDABLE_PACKAGES:  # fixed names, never taken from a checkpoint
        importlib.import_module(name)


_JSON_SCALARS = (type(None), bool, int, float, str)


def _from_jsonable(value: Any, where: str, source: str):
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, list):
        return [_from_jsonable(v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return _tensor_from_json(value, where, source)
        if "__class__" in value:
            return build_from_config(value, source=source, where=where)
        return {str(k): _from_jsonable(v, f"{where}.{k}", source) for k, v in value.items()}
    raise CheckpointError(f"{source}: {where} is a {type(value).__name__}, not a JSON value")


def _tensor_from_json(value: dict, where: str, source: str) -> torch.Tensor:
    data = value["__tensor__"]
    if set(value) != {"__tensor__"} or not _is_numeric_nest(data):
        raise CheckpointError(f"{source}: {where} is not a tensor literal (a nested list of numbers expected)")
    try:
        return torch.tensor(data)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{source}: {where} is not a tensor literal: {e}") from e


def _is_numeric_nest(data) -> bool:
    if isinstance(data, list):
        return all(_is_numeric_nest(v) for v in data)
    return isinstance(data, (bool, int, float))


class RecordsInit:
    """Mixin: remembers the arguments of the outermost __init__ call of each instance."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("cleandiffuser.") and not cls.__name__.startswith("_"):  # allowlisted as defined
            _BUILDABLE[_class_path(cls)] = cls
        if "__init__" not in cls.__dict__:
            return
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            if "_init_args" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                arguments = dict(bound.arguments)
                arguments.pop("self", None)
                extra = arguments.pop("kwargs", None) if any(
                    p.kind == p.VAR_KEYWORD and p.name == "kwargs" for p in signature.parameters.values()) else None
                if extra:
                    arguments.update(extra)
                object.__setattr__(self, "_init_args", (type(self), arguments))
            init(self, *args, **kw)

        cls.__init__ = recording_init

    def init_config(self) -> dict | None:
        """{"__class__": "module.Class", "kwargs": {...}}, or None when an argument is not JSON-able."""
        cls, arguments = self.__dict__.get("_init_args", (type(self), {}))
        try:
            kwargs = {k: _jsonable(v) for k, v in arguments.items()}
        except TypeError:
            return None
        return {"__class__": f"{cls.__module__}.{cls.__qualname__}", "kwargs": kwargs}


def build_from_config(config: dict, source: str = "checkpoint", where: str = "config"):
    """Inverse of `init_config`: construct the allowlisted class that `config` names (see the module docstring),
    with its JSON keyword arguments, nested configs built the same way. Anything else raises CheckpointError
    naming `source` (the file) and `where` (the entry) before any constructor runs."""
    if not isinstance(config, dict) or set(config) != {"__class__", "kwargs"}:
        raise CheckpointError(f"{source}: {where} must be {{'__class__': ..., 'kwargs': {{...}}}}, got "
                              f"{_short(config)}")
    path, kwargs = config["__class__"], config["kwargs"]
    if not isinstance(path, str) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: {where} has a malformed '__class__' or 'kwargs' entry")
    _import_buildable_packages()
    cls = _BUILDABLE.get(path)
    if cls is None:
        raise CheckpointError(
            f"{source}: {where} names {path!r}, which loading will not construct: only the library's models, "
            "networks and conditions (and classes registered with cleandiffuser.serialization.register_buildable) "
            "are rebuilt from a checkpoint")
    _check_keywords(cls, kwargs, path, where, source)
    arguments = {k: _from_jsonable(v, f"{where}.kwargs.{k}", source) for k, v in kwargs.items()}
    return cls(**arguments)


def _check_keywords(cls: type, kwargs: dict, path: str, where: str, source: str) -> None:
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    named = {n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(k for k in kwargs if not isinstance(k, str) or (k not in named and not takes_any))
    if unknown:
        raise CheckpointError(f"{source}: {where} gives {path} unknown arguments {unknown}; it takes {sorted(named)}")


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def flatten_state(state: Any, prefix: str, tensors: dict, skeleton_key: str = "") -> Any:
    """Move the tensors of a nested state (e.g. an optimizer state_dict) into `tensors`,
    returning a JSON skeleton that references them by key."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().clone()  # a copy: loading must not alias the live state
        return {"__ref__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[_key_json(k), flatten_state(v, f"{prefix}.{k}", tensors)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
    return state


def _key_json(k):
    return {"int": k} if isinstance(k, int) else k


def unflatten_state(skeleton: Any, tensors: dict) -> Any:
    if isinstance(skeleton, dict):
        if "__ref__" in skeleton:
            return tensors[skeleton["__ref__"]]
        if "__dict__" in skeleton:
            return {(k["int"] if isinstance(k, dict) else k): unflatten_state(v, tensors)
                    for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary file path next to `path`; it replaces `path` only if the block succeeds, so a
    crash never leaves a half-written file (and an old file stays intact). The data reaches the disk before
    the rename and the rename before returning (fsync of the file, then of the directory), so a power loss
    leaves the old file or the new one; the file gets the mode a plain open() would (0o666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide checkpoints and datasets from others
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory) -> None:
    """Make a rename in `directory` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory: the rename is as durable as they make it
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only read by setting,
    which would briefly let another thread create files with umask 0)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write tensors + JSON metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"cleandiffuser": json.dumps(meta)})


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by `save_checkpoint` (safetensors: no code is executed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get("cleandiffuser")
        tensors = load_file(path)
    except Exception as e:  # noqa: BLE001 - report the file
        raise CheckpointError(f"{path} is not a cleandiffuser checkpoint (safetensors expected): {e}") from e
    if raw is None:
        raise CheckpointError(f"{path} has no cleandiffuser metadata; was it written by DiffusionModel.save()?")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its cleandiffuser metadata is not valid JSON (damaged or edited?): {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its cleandiffuser metadata is a {type(meta).__name__}, not a JSON object")
    return tensors, meta
