"""Every float setting refuses nan and inf (TOML has both), naming its key: nan passes every
comparison with a bound, so without this it reached timers, sleeps and prices."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.backends.registry import BACKEND_TYPES
from secrets_agent.config.loader import parse_config
from secrets_agent.config.schema import AgentConfig, BackendCommon
from secrets_agent.errors import ConfigError

NON_FINITE = (math.nan, math.inf, -math.inf)


def _dataclass_of(hint: Any) -> Any:
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint if dataclasses.is_dataclass(hint) else None


def float_keys(cls: Any) -> Iterator[tuple[str, ...]]:
    """The key path of every float field of ``cls``, its nested tables' included."""
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        if hints[fld.name] is float:
            yield (fld.name,)
        nested = _dataclass_of(hints[fld.name])
        if nested is not None:
            yield from ((fld.name, *rest) for rest in float_keys(nested))


def _nested(keys: tuple[str, ...], value: float) -> dict[str, Any]:
    table: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        table = {key: table}
    return table


def cases() -> Iterator[tuple[dict[str, Any], str]]:
    """(a raw config setting one float to a placeholder, the key its error must name)."""
    hints = typing.get_type_hints(AgentConfig)
    for section in ("listener", "cache", "shared_cache", "pricing", "audit", "metrics"):
        for keys in float_keys(hints[section]):
            yield {section: _nested(keys, 0.0)}, ".".join((section, *keys))
    for type_name, backend_type in sorted(BACKEND_TYPES.items()):
        for keys in [*float_keys(backend_type.Options), *float_keys(BackendCommon)]:
            table = {"name": "b", "type": type_name, **_nested(keys, 0.0)}
            yield {"backends": [table]}, ".".join(("backends[0]", *keys))


def _with(raw: Any, value: float) -> Any:
    """``raw`` with its one float placeholder replaced by ``value``."""
    if isinstance(raw, dict):
        return {k: _with(v, value) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_with(v, value) for v in raw]
    return value if isinstance(raw, float) else raw


ALL = list(cases())


def test_the_walk_finds_the_float_settings() -> None:
    keys = {key for _, key in ALL}
    assert len(keys) > 40, keys
    for key in (
        "cache.sweep_interval",
        "listener.header_timeout",
        "pricing.vault",
        "shared_cache.timeout",
        "backends[0].deadline",
        "backends[0].feed.poll_interval",
    ):
        assert key in keys


@pytest.mark.parametrize(("raw", "key"), ALL, ids=[key for _, key in ALL])
def test_nan_and_inf_are_refused_naming_the_key(raw: dict[str, Any], key: str) -> None:
    for value in NON_FINITE:
        with pytest.raises(ConfigError) as info:
            parse_config(_with(raw, value), Path("/"))
        expected = f"{key}: must be a finite number, got {value}"
        assert expected in info.value.problems, info.value.problems


def test_a_finite_value_in_range_is_still_accepted() -> None:
    config = parse_config({"cache": {"sweep_interval": 1e3}, "pricing": {"vault": 1e-3}}, Path("/"))
    assert config.cache.sweep_interval == 1000.0 and config.pricing.vault == 0.001
