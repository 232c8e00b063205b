"""The trajectory's content-hash cache: one JSON file per finished checkpoint.

An entry is found by the checkpoint's contents (:func:`lambdahat.checkpoints.checkpoint_identity`)
and a **key**, :func:`cache_key`, the sha256 of a description of everything else the result
depends on:

- the settings, every field of :class:`lambdahat.settings.Settings` with its default filled in
  (an explicit default is the same setting; a library whose defaults change does not reuse
  results made with the old ones);
- ``sampled_params``, the loss, the data and the model factory, each by :func:`describe`.

:func:`describe` reads an object the way it would run: a function by its qualified name, its
compiled code (bytecode, constants, the names it uses), its default arguments and the values in
its closure cells; a ``functools.partial`` by its function and arguments; a bound method by its
function and its object; an object by its class and its attributes (``vars``; for classes outside
torch, numpy and the standard library, also the code of their methods); an ``nn.Module`` by that
plus its parameters and buffers, and its sub-modules; tensors and arrays by a sha256 of their
contents. Memory addresses never enter it, so the key is the same in every process.

What the key cannot see (a changed one of these reuses stale results; clear the cache, or pass
a new ``cache_dir``):

- the values of **global variables** a function reads (only their names: ``lambda o, y: SCALE *
  f(o, y)`` does not see a new ``SCALE``), and the code of functions it calls by a global name;
- the **contents behind an attribute**: a Dataset that reads files is known by its attributes
  (the path), not by the files; objects of C types without attributes (a ``torch.Generator``) by
  their type only; Python sequences of more than 100,000 items by their length; objects nested
  more than 12 levels deep by their type;
- the **initial weights of the model factory's model** (its parameters and persistent buffers by
  name, shape and dtype only): every checkpoint overwrites them, as loading is strict;
- the code of torch, numpy and the standard library (a new version of them), and of classes of
  other packages installed (such as ``transformers``) beyond their names.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoints import tensor_sha256
from .tables import as_float, jsonable, write_text_atomic

__all__ = ["CACHE_VERSION", "describe", "fingerprint", "cache_key", "entry_path", "read_entry", "read_row",
           "write_entry", "remove_stale_temporaries"]

#: Bumped whenever the meaning of an entry or of the key changes.
CACHE_VERSION = 3  # 3: a calibration's one burn-in is the travel-equivalent one (lambdahat.calibrate)
_MAX_DEPTH = 12
_MAX_ITEMS = 100_000
_LIBRARIES = {"builtins", "torch", "numpy", "transformers", "functools", "collections", "abc", "typing", "enum",
              "dataclasses", "pathlib", "re", "operator", "types", "math"}
_MODULE_BOOKKEEPING = frozenset(vars(nn.Module())) | {"training"}
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None) or '?'}.{getattr(obj, '__qualname__', None) or type(obj).__qualname__}"


def _is_library(cls: type) -> bool:
    return (cls.__module__ or "").partition(".")[0] in _LIBRARIES


class _Describer:
    """One description: remembers what it has seen (a second visit is a reference, so cycles end)."""

    def __init__(self, weights: bool):
        self.weights = weights
        self.seen: dict[int, int] = {}

    def __call__(self, obj: Any, depth: int = 0) -> Any:
        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else f"float:{obj}"
        if isinstance(obj, np.generic):
            return self(obj.item(), depth)
        if isinstance(obj, bytes):
            return {"bytes": hashlib.sha256(obj).hexdigest()}
        if isinstance(obj, (torch.dtype, torch.device, np.dtype, PurePath)):
            return f"{type(obj).__name__}:{obj}"
        if isinstance(obj, Tensor):
            return {"tensor": tensor_sha256(obj)}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                return {"ndarray": self(obj.tolist(), depth + 1)}
            data = np.ascontiguousarray(obj)
            return {"ndarray": hashlib.sha256(f"{data.dtype}{data.shape}".encode() + data.tobytes()).hexdigest()}
        if isinstance(obj, types.ModuleType):
            return {"module": obj.__name__}
        if isinstance(obj, types.CodeType):
            return self._code(obj, depth)
        if id(obj) in self.seen:
            return {"ref": self.seen[id(obj)]}
        if depth > _MAX_DEPTH:
            return {"deep": _name(type(obj))}
        self.seen[id(obj)] = len(self.seen)
        d = depth + 1
        if isinstance(obj, (list, tuple, set, frozenset)):
            if len(obj) > _MAX_ITEMS:
                return {"type": _name(type(obj)), "len": len(obj)}
            items = [self(v, d) for v in obj]
            if isinstance(obj, (set, frozenset)):
                items = sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
            return {type(obj).__name__: items}
        if isinstance(obj, dict):
            return {"dict": self._mapping(obj, d)}
        if isinstance(obj, functools.partial):
            return {"partial": self(obj.func, d), "args": self(obj.args, d), "keywords": self(obj.keywords, d)}
        if isinstance(obj, types.FunctionType):
            closure = [self(c.cell_contents, d) if _filled(c) else "<empty>" for c in obj.__closure__ or ()]
            return {"function": _name(obj), "code": self._code(obj.__code__, d), "defaults": self(obj.__defaults__, d),
                    "kwdefaults": self(obj.__kwdefaults__, d), "closure": closure}
        if isinstance(obj, types.MethodType):
            return {"method": self(obj.__func__, d), "self": self(obj.__self__, d)}
        if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            owner = getattr(obj, "__self__", None)
            bound = owner is not None and not isinstance(owner, types.ModuleType)
            return {"builtin": _name(obj), **({"self": self(owner, d)} if bound else {})}
        if isinstance(obj, type):
            return self._class(obj, d)
        if isinstance(obj, nn.Module):
            return self._module(obj, d)
        if isinstance(obj, Mapping):
            return {"mapping": _name(type(obj)), "items": self._mapping(obj, d)}
        return self._object(obj, d)

    def _mapping(self, obj: Mapping, depth: int) -> list:
        if len(obj) > _MAX_ITEMS:
            return [{"len": len(obj)}]
        items = [[self(k, depth), self(v, depth)] for k, v in obj.items()]
        return sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))

    def _code(self, code: types.CodeType, depth: int) -> dict[str, Any]:
        return {
            "bytecode": hashlib.sha256(code.co_code).hexdigest(),
            "consts": [self._code(c, depth) if isinstance(c, types.CodeType) else self(c, depth) for c in code.co_consts],
            "names": list(code.co_names),
            "varnames": list(code.co_varnames),
            "freevars": list(code.co_freevars),
            "args": [code.co_argcount, code.co_kwonlyargcount, code.co_flags],
        }

    def _class(self, cls: type, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {"class": _name(cls)}
        own = [c for c in cls.__mro__ if c is not object and not _is_library(c)]
        if own:
            out["code"] = {_name(c): self._namespace(c, depth) for c in own}
        return out

    def _namespace(self, cls: type, depth: int) -> dict[str, Any]:
        out = {}
        for name, value in sorted(vars(cls).items()):
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            if isinstance(value, types.FunctionType):
                out[name] = self._code(value.__code__, depth)
            elif not name.startswith("__") and not isinstance(value, (type, types.MemberDescriptorType,
                                                                       types.GetSetDescriptorType)):
                out[name] = self(value, depth)
        return out

    def _module(self, module: nn.Module, depth: int) -> dict[str, Any]:
        attrs = {k: v for k, v in vars(module).items() if k not in _MODULE_BOOKKEEPING}
        hooks = [h for name in ("_forward_hooks", "_forward_pre_hooks") for h in getattr(module, name, {}).values()]
        volatile = getattr(module, "_non_persistent_buffers_set", set())

        def tensor(name: str, t: Tensor | None, persistent: bool) -> Any:
            if t is None or self.weights or not persistent:
                return self(t, depth)
            return [str(t.dtype), list(t.shape), bool(t.requires_grad)]

        return {
            "nn.Module": self._class(type(module), depth),
            "attrs": self(attrs, depth),
            "hooks": [self(h, depth) for h in hooks],
            "params": {n: tensor(n, p, True) for n, p in module._parameters.items()},
            "buffers": {n: tensor(n, b, n not in volatile) for n, b in module._buffers.items()},
            "children": {n: self(m, depth) for n, m in module._modules.items()},
        }

    def _object(self, obj: Any, depth: int) -> dict[str, Any]:
        cls = type(obj)
        out: dict[str, Any] = {"object": self._class(cls, depth)}
        state = {}
        if dataclasses.is_dataclass(obj):
            state = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        else:
            if hasattr(obj, "__dict__"):
                state.update(vars(obj))
            for slot in (s for c in cls.__mro__ for s in getattr(c, "__slots__", ()) if isinstance(s, str)):
                if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    state[slot] = getattr(obj, slot)
        if _is_library(cls):  # torch's and numpy's private attributes are bookkeeping (a DataLoader's iterator)
            state = {k: v for k, v in state.items() if not k.startswith("_")}
        if state:
            out["state"] = self(state, depth)
        elif cls.__repr__ is not object.__repr__:
            text = repr(obj)
            if not _ADDRESS.search(text):
                out["repr"] = text
        return out


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def describe(obj: Any, *, weights: bool = True) -> Any:
    """A JSON-ready description of ``obj`` for the cache key (module docstring). ``weights=False``
    describes modules' parameters and persistent buffers by name, shape and dtype only."""
    return _Describer(weights)(obj)


def fingerprint(obj: Any, *, weights: bool = True) -> str:
    """sha256 of :func:`describe` ``(obj)``."""
    text = json.dumps(describe(obj, weights=weights), sort_keys=True, ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(settings: Mapping[str, Any], *, data: Any, loss_fn: Any, make_model: Any, sampled_params: Any = None,
              extra: Any = None) -> str:
    """The key of one setting for one problem (module docstring): ``settings`` is the full
    ``Settings.to_dict()``; ``make_model`` is described without its weights."""
    material = {
        "version": CACHE_VERSION,
        "settings": describe(dict(settings)),
        "sampled_params": describe(sampled_params),
        "data": describe(data),
        "loss": describe(loss_fn),
        "model": describe(make_model, weights=False),
        "extra": describe(extra),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def entry_path(cache_dir: Path, step: int, identity: str, key: str) -> Path:
    """The file of one checkpoint's entry: named by its step and the first digits of both hashes."""
    return cache_dir / f"step_{step:012d}_{identity[:10]}_{key[:10]}.json"


def read_entry(path: Path, identity: str, key: str, parse: Callable[[dict[str, Any]], Any]) -> Any | None:
    """``parse(record)`` of the entry at ``path``, or None when there is none for this checkpoint
    and key. A file that is not JSON, or not an entry of this shape (``parse`` raises), is a miss
    with a warning naming the file; the entry is then computed and written again."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        return _miss(path, f"cannot be read ({err})")
    try:
        record = json.loads(text)
    except ValueError:
        return _miss(path, "is not valid JSON")
    if not isinstance(record, dict) or not isinstance(record.get("checkpoint_sha256"), str) \
            or not isinstance(record.get("settings_key"), str):
        return _miss(path, "is not a cache entry (no checkpoint_sha256 and settings_key)")
    if record["checkpoint_sha256"] != identity or record["settings_key"] != key:
        return None  # another checkpoint or setting whose hashes share the file name's prefixes
    try:
        return parse(record)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        return _miss(path, f"does not hold an entry of the expected shape ({type(err).__name__}: {err})")


def read_row(path: Path, identity: str, key: str, *, step: int, columns: Sequence[str],
             floats: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The ``(row, verdicts)`` of the trajectory entry at ``path`` (:func:`read_entry`): the row
    must be for ``step`` and hold every column, numbers (or null) in ``floats`` (returned as float,
    NaN for null), plain values or lists of names elsewhere; verdicts map check names to text."""

    def parse(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        stored, verdicts = record["row"], dict(record.get("verdicts", {}))
        missing = [k for k in columns if k not in stored]
        if missing:
            raise KeyError(f"the row lacks {missing}")
        if stored["step"] != step:
            raise ValueError(f"the row is for step {stored['step']!r}, not {step}")
        row = {k: (as_float(stored[k]) if k in floats else stored[k]) for k in columns}
        for k, v in row.items():
            plain = v is None or isinstance(v, (bool, int, float, str))
            if not (plain or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
                raise TypeError(f"{k} is a {type(v).__name__}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in verdicts.items()):
            raise TypeError("verdicts is not a mapping of check names to text")
        return row, verdicts

    return read_entry(path, identity, key, parse)


def _miss(path: Path, why: str) -> None:
    warnings.warn(f"cache file {path} {why}; ignoring it and estimating that checkpoint again.", stacklevel=3)
    return None


def write_entry(path: Path, identity: str, key: str, **content: Any) -> Path:
    """Write one entry atomically (:func:`lambdahat.tables.write_text_atomic`): the two hashes
    and ``content`` (made JSON-ready)."""
    record = {"checkpoint_sha256": identity, "settings_key": key, **jsonable(content)}
    return write_text_atomic(path, json.dumps(record, indent=1, allow_nan=False))


def remove_stale_temporaries(cache_dir: Path) -> None:
    """Remove the temporary files of writes whose process is gone (a run killed mid-write)."""
    for tmp in cache_dir.glob("*.json.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
