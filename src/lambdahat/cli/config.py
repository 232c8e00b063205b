"""Flags and TOML keys: the sampler settings derived from :class:`lambdahat.settings.Settings`,
everything else from one table of :class:`Option` s; a config file read into the same values.

Every field of ``Settings`` is one flag ``--name-with-dashes`` and one TOML key ``name`` (at the top
level or under ``[estimate]``), with the field's help text and its default appended from the
dataclass; values are parsed by :func:`lambdahat.settings.parse_setting` and validated by
``Settings`` itself as soon as they are read, before a model is built or a sample drawn. Flags
override the file. Only the settings that were given are passed on, so ``estimate_llc``'s own
defaults (the adaptive ``"auto"`` ones) apply to the rest.

**Reading TOML on Python 3.10.** ``tomllib`` is in the standard library from Python 3.11; on 3.10
the identical ``tomli`` (the project tomllib was taken from) is used instead, declared as a
dependency for ``python_version < "3.11"`` only. That keeps ``requires-python >= 3.10`` — 3.10 is
still the system Python of common LTS distributions and of many clusters — at the cost of one
small pure-Python package there and nothing elsewhere. Either is imported only when ``--config``
is given, so no other command depends on it.

**Trust boundary.** A config file is code: its ``model`` key, like ``--model MODULE:FUNCTION``,
names a Python function that is imported and run with your permissions. No other key imports or
runs anything: paths are read as data (``torch.load(weights_only=True)``, ``numpy.load
(allow_pickle=False)``, text), ``loss`` is one of three names, ``sampler`` is looked up in
lambdahat's own registry, ``hf`` is loaded without ``trust_remote_code``. Treat a config file
from someone else like a script from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import Settings, parse_setting
from .errors import UserError, positive_int

__all__ = ["Option", "Config", "add_setting_flags", "read_config", "SETTING_NAMES", "TRUST_NOTE"]

SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Settings))
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}

TRUST_NOTE = ("--model and a config file's model key import and run Python code (the factory) with your "
              "permissions: treat a config file like a script. No other flag or key imports anything.")


# --- the sampler settings ---------------------------------------------------------------------


def add_setting_flags(group, *, exclude: Sequence[str] = ()) -> None:
    """One flag per ``Settings`` field (``--preconditioner auto|none``; bools as store_true)."""
    for f in dataclasses.fields(Settings):
        if f.name in exclude:
            continue
        flag, kind = "--" + f.name.replace("_", "-"), f.metadata.get("cli", "str")
        text = (f.metadata.get("help", "") + _default_note(f)).replace("%", "%%")
        if f.name == "preconditioner":
            group.add_argument(flag, dest=f.name, choices=("auto", "none"), default=None, help=text)
        elif kind == "bool":
            group.add_argument(flag, dest=f.name, action="store_true", default=None, help=text)
        else:
            metavar = {"float": "X", "int": "N", "bool": "true|false"}.get(kind.removesuffix("_or_auto"), "NAME")
            metavar += "|auto" if kind.endswith("_or_auto") else ""
            group.add_argument(flag, dest=f.name, type=_setting_type(f.name), default=None, metavar=metavar,
                               help=text)


def _default_note(f: dataclasses.Field) -> str:
    if f.default is None or isinstance(f.default, bool):  # None: the help says what it means; bools are switches
        return ""
    return f" (default: {f.default})"


def _setting_type(name: str):
    def parse(text: str) -> Any:
        try:
            return parse_setting(name, text)  # the value itself is checked by Settings in read_config
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"--{name.replace('_', '-')} ")) from None

    parse.__name__ = name
    return parse


def _validated(name: str, value: Any) -> Any:
    """``value`` as ``Settings`` normalises it (a ValueError/TypeError naming ``name`` if invalid)."""
    return Settings.from_mapping({name: value})[name]


def _setting_from_toml(name: str, value: Any) -> Any:
    kind = _FIELDS[name].metadata.get("cli", "str")
    base = kind.removesuffix("_or_auto")
    if isinstance(value, str) and base != "str":  # "auto", or a number written as a string
        try:
            parsed = parse_setting(name, value)
        except ValueError as err:
            raise ValueError(str(err).replace(f"--{name.replace('_', '-')}", name)) from None
        return _validated(name, parsed)
    wanted = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}[base]
    ok = {
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str) or (name == "sampler" and isinstance(value, Mapping) and "name" in value)
        or (name == "preconditioner" and isinstance(value, list)),
    }[base]
    if not ok:
        extra = " or \"auto\"" if kind.endswith("_or_auto") else ""
        if name == "sampler":
            extra = " (a name such as \"sgld\", or a table { name = \"sghmc\", friction = 0.1 })"
        raise ValueError(f"{name} must be {wanted}{extra}, got {_toml(value)}.")
    return _validated(name, float(value) if base == "float" else value)


# --- the other keys ---------------------------------------------------------------------------

_HEAD = re.compile(r"^\s*(\d+)\.(\d+)\s*$")


def _head(text: str) -> tuple[int, int]:
    found = _HEAD.match(text)
    if not found:
        raise ValueError(f"must be LAYER.HEAD such as 1.2 (head 2 of layer 1), got {text!r}")
    return int(found.group(1)), int(found.group(2))


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"must be a JSON object such as '{{\"hidden\": 64}}', got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object such as '{{\"hidden\": 64}}', got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number, got {text!r}")
    return value


@dataclass(frozen=True)
class Option:
    """A flag and TOML key that is not a sampler setting. ``kind``: text, path, paths, posint,
    posfloat, object (JSON / TOML table), names, choice, head (LAYER.HEAD) or switch."""

    name: str
    kind: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    positional: bool = False

    @property
    def flag(self) -> str:
        return self.name.upper() if self.positional else "--" + self.name.replace("_", "-")

    def add_to(self, group) -> None:
        kwargs: dict[str, Any] = dict(default=None, help=self.help.replace("%", "%%"))
        if self.kind == "switch":
            kwargs["action"] = "store_true"
        elif self.kind == "choice":
            kwargs["choices"] = self.choices
        else:
            kwargs["type"] = _argparse_type(self._parse_text)
            kwargs["metavar"] = self.metavar
            if self.kind in ("paths", "names"):
                kwargs["nargs"] = "+"
        if self.positional:
            group.add_argument(self.name, nargs="?", **kwargs)
        else:
            group.add_argument(self.flag, dest=self.name, **kwargs)

    def _parse_text(self, text: str) -> Any:
        if self.kind in ("path", "paths"):
            if not text:
                raise ValueError("must be a path, got ''")
            return Path(text)
        return {"posint": positive_int_value, "posfloat": _positive_float, "object": _json_object,
                "head": _head}.get(self.kind, str)(text)

    def from_toml(self, value: Any) -> Any:
        """The TOML value as the flag would give it (a ValueError saying what was expected)."""
        def wrong(wanted: str) -> ValueError:
            return ValueError(f"{self.name} must be {wanted}, got {_toml(value)}")

        kind = self.kind
        if kind == "switch":
            if not isinstance(value, bool):
                raise wrong("true or false")
            return value
        if kind == "posint":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise wrong("a positive integer")
            return value
        if kind == "posfloat":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise wrong("a positive number")
            return float(value)
        if kind == "object":
            if not isinstance(value, dict):
                raise wrong("a table such as { hidden = 64 }")
            return value
        if kind == "names":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise wrong('an array of names such as ["fc1", "fc2.weight"]')
            return value
        if kind == "paths" and isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return [Path(v) for v in value]
        if not isinstance(value, str):
            raise wrong({"head": 'a string "LAYER.HEAD" such as "1.2" (a TOML number would read 1.10 as 1.1)',
                         "choice": f"one of {', '.join(self.choices)}", "paths": "a path or an array of paths",
                         "path": "a path (a string)", "text": f"a string{' ' + self.metavar if self.metavar else ''}",
                         }[kind])
        if kind == "choice" and value not in self.choices:
            raise wrong(f"one of {', '.join(self.choices)}")
        try:
            parsed = self._parse_text(value)
        except ValueError as err:
            raise ValueError(f"{self.name} {err}") from None
        return [parsed] if kind == "paths" else parsed


def positive_int_value(text: str) -> int:
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(str(err)) from None


def _argparse_type(parse):
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def _toml(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
    shown = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return f"{shown[:60]} ({kind})"


# --- reading a config file and the flags ------------------------------------------------------


@dataclass
class Config:
    """What a command was given: ``values`` (inputs and the command's own keys), ``settings``
    (only the sampler settings given, validated) and ``tables`` (e.g. ``stages``); flags over the file."""

    values: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None


def read_config(args: argparse.Namespace, options: Sequence[Option], *, tables: Mapping[str, Sequence[Option]] = {},
                settings: Sequence[str] = SETTING_NAMES) -> Config:
    """The ``--config`` TOML file (if any) checked key by key, overlaid with the flags given."""
    config = Config(tables={name: {} for name in tables})
    path = getattr(args, "config", None)
    by_name = {o.name: o for o in options}
    if path is not None:
        config.path = path
        document = _load_toml(path)
        known = sorted([*by_name, *settings]) + [f"[{t}]" for t in ("estimate", *tables)]
        for key, value in document.items():
            try:
                if key == "estimate" or key in tables:
                    if not isinstance(value, dict):
                        raise ValueError(f"{key} must be a table [{key}], got {_toml(value)}")
                    if key == "estimate":
                        for name, item in value.items():
                            _put_setting(config, name, item, settings, where="[estimate] ")
                    else:
                        table_options = {o.name: o for o in tables[key]}
                        for name, item in value.items():
                            if name not in table_options:
                                raise ValueError(f"unknown key {name!r} in [{key}]; known: {sorted(table_options)}")
                            config.tables[key][name] = table_options[name].from_toml(item)
                elif key in by_name:
                    config.values[key] = by_name[key].from_toml(value)
                elif key in SETTING_NAMES:
                    _put_setting(config, key, value, settings, where="")
                else:
                    raise ValueError(f"unknown key {key!r}; known keys: {', '.join(known)}")
            except (ValueError, TypeError) as err:
                raise UserError(f"{path}: {err}.".replace("..", ".")) from None
    for option in options:
        value = getattr(args, option.name, None)
        if value is not None:
            config.values[option.name] = value
    for name, table_options in tables.items():
        for option in table_options:
            value = getattr(args, option.name, None)
            if value is not None:
                config.tables[name][option.name] = value
    for name in settings:
        value = getattr(args, name, None)
        if value is not None:
            try:
                config.settings[name] = _validated(name, value)
            except (ValueError, TypeError) as err:
                raise UserError(f"--{name.replace('_', '-')}: {err}") from None
    try:  # together, as estimate_llc will see them (each was already checked alone)
        checked = Settings.from_mapping(config.settings)
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None
    config.settings = {name: checked[name] for name in config.settings}
    return config


def _put_setting(config: Config, name: str, value: Any, allowed: Sequence[str], where: str) -> None:
    if name not in allowed:
        extra = "" if name in SETTING_NAMES else f"; settings are {', '.join(allowed)}"
        raise ValueError(f"{where}{name!r} is not a setting this command takes{extra}")
    if name in config.settings:
        raise ValueError(f"{name} is given both at the top level and under [estimate]; keep one")
    config.settings[name] = _setting_from_toml(name, value)


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UserError("reading --config on Python 3.10 needs the tomli package: pip install tomli.") from None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--config {path}: cannot read it ({getattr(err, 'strerror', None) or err}).") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"--config {path} is not valid TOML: {err}.") from None
