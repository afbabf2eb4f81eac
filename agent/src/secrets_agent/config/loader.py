"""TOML → frozen config objects, rejecting unknown keys, wrong types and out-of-range values."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from secrets_agent.config.paths import local_problem, text_problem
from secrets_agent.config.schema import AccessRule, AgentConfig, BackendCommon, BackendConfig
from secrets_agent.errors import ConfigError

EX_CONFIG = 78  # sysexits.h: configuration error

_SECTIONS = (
    "listener",
    "log",
    "cache",
    "encryption",
    "metrics",
    "audit",
    "shared_cache",
    "pricing",
)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a config file; raise ``ConfigError`` listing every problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML {_place(exc)}{_reason(exc)}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    return parse_config(raw, base_dir=path.resolve().parent, local=True)


def _place(exc: tomllib.TOMLDecodeError) -> str:
    """Where the error is, never what is there: tomllib's message can quote the file."""
    found = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
    if found:
        return f"at line {found[1]}, column {found[2]}"
    return "at the end of the file" if "end of document" in str(exc) else "(position unknown)"


def _reason(exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's reason when it quotes nothing from the file ("Invalid value", "Unclosed
    array"); one that quotes (an illegal character, a key) is left out: it could be a secret."""
    reason = str(exc).split(" (at ", 1)[0].strip()
    syntax = re.sub(r"'[=\[\]{},.]'", "", reason)  # TOML's own punctuation, quoted: fine
    if not reason or any(mark in syntax for mark in "'\"("):
        return ""
    return f" ({reason[0].lower()}{reason[1:]})"


def parse_config(raw: dict[str, Any], base_dir: Path, *, local: bool = False) -> AgentConfig:
    """Validate an already-parsed TOML document; ``local``: for this machine, whose files the
    values of path keys must then evidently name (``config.paths``)."""
    loader = _Loader(base_dir, local=local)
    hints = typing.get_type_hints(AgentConfig)
    kwargs: dict[str, Any] = {}
    for key in raw:
        if key not in _SECTIONS and key not in ("backends", "access"):
            loader.problem(key, "unknown section")
    for name in _SECTIONS:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            loader.problem(name, "must be a table")
            continue
        kwargs[name] = loader.build(hints[name], table, name)
    kwargs["backends"] = loader.backends(raw.get("backends", [{"name": "env", "type": "env"}]))
    kwargs["access"] = loader.rules(raw.get("access", []))
    loader.kinds_apart(rules=bool(kwargs["access"]))
    pricing = kwargs.get("pricing")
    if pricing is not None:
        names = {b.common.name for b in kwargs["backends"]}
        for name in sorted(set(pricing.backends) - names):
            loader.problem(f"pricing.backends.{name}", "no backend has this name")
    if loader.problems:
        raise ConfigError(loader.problems)
    return AgentConfig(**kwargs, warnings=tuple(loader.warnings))


class _Loader:
    def __init__(self, base_dir: Path, *, local: bool = False) -> None:
        self.base_dir = base_dir
        self.local = local
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self._placed: list[tuple[str, str, Any]] = []  # (where, name, options) of each backend

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(f"{path}: {reason}")

    def backends(self, raw: Any) -> tuple[BackendConfig, ...]:
        from secrets_agent.backends.registry import BACKEND_TYPES

        if not isinstance(raw, list) or not raw:
            self.problem("backends", "must be a non-empty array of tables ([[backends]])")
            return ()
        result: list[BackendConfig] = []
        seen: set[str] = set()
        common_keys = {f.name for f in dataclasses.fields(BackendCommon)}
        for index, table in enumerate(raw):
            where = f"backends[{index}]"
            if not isinstance(table, dict):
                self.problem(where, "must be a table")
                continue
            common = self.build(
                BackendCommon, {k: v for k, v in table.items() if k in common_keys}, where
            )
            backend_type = BACKEND_TYPES.get(str(table.get("type", "")))
            if common is None:
                continue
            if backend_type is None:
                choices = ", ".join(sorted(BACKEND_TYPES))
                self.problem(f"{where}.type", f"unknown backend type (choose one of: {choices})")
                continue
            if common.name in seen:
                self.problem(f"{where}.name", f"duplicate backend name {common.name!r}")
            seen.add(common.name)
            rest = {k: v for k, v in table.items() if k not in common_keys}
            options = self.build(backend_type.Options, rest, where)
            if options is not None:
                result.append(BackendConfig(common=common, options=options))
                notices: list[tuple[str, str]] = getattr(options, "notices", lambda explicit: [])(
                    frozenset(rest)
                )
                self.warnings += [f"{where}.{key}: {reason}" for key, reason in notices]
                self._placed.append((where, common.name, options))
        return tuple(result)

    def kinds_apart(self, rules: bool) -> None:
        """Backends where one kind's names reach into another's (``backends/namespaces.py``):
        a warning, or a problem when ``[[access]]`` rules could not tell the kinds apart."""
        from secrets_agent.backends.namespaces import naming_of, notices

        for where, name, options in self._placed:
            naming = naming_of(options)
            if naming is None:
                continue
            warnings, problems = notices(naming, rules)
            self.warnings += [f"{where}.{key} (backend {name!r}): {why}" for key, why in warnings]
            for key, why in problems:
                self.problem(f"{where}.{key} (backend {name!r})", why)

    def rules(self, raw: Any) -> tuple[AccessRule, ...]:
        """``[[access]]``: each rule named by its position (``access[2]``) in any problem."""
        if not isinstance(raw, list):
            self.problem("access", "must be an array of tables ([[access]])")
            return ()
        result = []
        for index, table in enumerate(raw):
            where = f"access[{index}]"
            if not isinstance(table, dict):
                self.problem(where, "must be a table")
                continue
            rule = self.build(AccessRule, table, where)
            if rule is not None:
                result.append(rule)
        return tuple(result)

    def build(self, cls: Any, table: dict[str, Any], where: str) -> Any:
        """Instantiate dataclass ``cls`` from ``table``, or record problems and return None."""
        before = len(self.problems)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for key in table:
            if key not in fields:
                self.problem(f"{where}.{key}", "unknown key")
        kwargs: dict[str, Any] = {}
        for name, fld in fields.items():
            path = f"{where}.{name}"
            if name not in table:
                if (
                    fld.default is dataclasses.MISSING
                    and fld.default_factory is dataclasses.MISSING
                ):
                    self.problem(path, "is required")
                continue
            value = self.convert(hints[name], table[name], path)
            if value is not _INVALID:
                value = self.apply_rules(fld.metadata, value, path)
            if value is not _INVALID:
                kwargs[name] = value
        if len(self.problems) > before:
            return None
        obj = cls(**kwargs)
        # Cross-field rules live on the section itself, as ``validate() -> [(key, reason)]``.
        for key, reason in getattr(obj, "validate", lambda: [])():
            self.problem(f"{where}.{key}" if key else where, reason)
        return None if len(self.problems) > before else obj

    def convert(self, hint: Any, value: Any, path: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (types.UnionType, typing.Union):
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, path)
        if origin is dict:
            if not isinstance(value, dict):
                self.problem(path, f"must be a table, not {_toml_type(value)}")
                return _INVALID
            entries = {k: self.convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
            return _INVALID if _INVALID in entries.values() else entries
        if origin is tuple:
            if not isinstance(value, list):
                self.problem(path, f"must be an array, not {_toml_type(value)}")
                return _INVALID
            items = [self.convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value)]
            return _INVALID if _INVALID in items else tuple(items)
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                self.problem(path, "must be a table")
                return _INVALID
            result = self.build(hint, value, path)
            return _INVALID if result is None else result
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint in (bool, int, float, str) and (
            not isinstance(value, hint) or (hint is int and isinstance(value, bool))
        ):
            self.problem(path, f"must be {_TYPE_NAMES[hint]}, not {_toml_type(value)}")
            return _INVALID
        return value

    def apply_rules(self, meta: Any, value: Any, path: str) -> Any:
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            reason = _rule_violation(meta, item)
            if reason:
                self.problem(path, reason)
                return _INVALID
        if meta.get("path") and isinstance(value, str) and value:
            return self.path(value, path, optional=meta.get("optional", False))
        return value

    def path(self, written: str, key: str, *, optional: bool) -> Any:
        """``written`` resolved against the config's directory; refused, by key only, when not
        evidently a path (it may be a pasted secret: ``config.paths``)."""
        resolved = self.base_dir / Path(written).expanduser()
        reason = text_problem(written)
        if reason is None and self.local and not optional:
            reason = local_problem(written, resolved, self.base_dir)
        if reason is not None:
            self.problem(key, reason)
            return _INVALID
        return str(resolved)


def _rule_violation(meta: Any, value: Any) -> str | None:
    low, high = meta.get("min"), meta.get("max")
    choices, check = meta.get("choices"), meta.get("check")
    if isinstance(value, float) and not math.isfinite(value):
        # TOML has nan and inf; nan passes every comparison with a bound, and neither is a
        # duration, a price or a share anything could use.
        return f"must be a finite number, got {value}"
    if low is not None and value < low:
        return f"must be >= {low}, got {value}"
    if high is not None and value > high:
        return f"must be <= {high}, got {value}"
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(choices)}"  # the value itself is never echoed
    if check is not None:
        reason: str | None = check(value)
        return reason
    return None


_INVALID = object()
_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _toml_type(value: Any) -> str:
    names: dict[type, str] = {**_TYPE_NAMES, list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)
