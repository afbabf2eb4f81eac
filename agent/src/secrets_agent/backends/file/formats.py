"""Parsers for Airflow's LocalFilesystemBackend file formats: .env, .json, .yaml."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

SUFFIXES = (".env", ".json", ".yaml", ".yml")
# A YAML alias repeats its anchor's whole value, so a 1 KB file can describe billions of
# values: PyYAML shares the repeats, but turning them into text writes every one out (minutes,
# gigabytes, the GIL held throughout). Anchors for shared defaults repeat tens of values; this
# many takes ~0.1 s to write out.
MAX_ALIAS_REPEATS = 1_000_000


class FileFormatError(ValueError):
    """A secrets file cannot be parsed; messages give a position, never file content."""


def parse_secrets_file(path: Path, text: str) -> dict[str, Any]:
    """Return the file's top-level mapping of id → raw value."""
    try:
        return _parse(path.suffix.lower(), text)
    except RecursionError:
        raise FileFormatError("values are nested too deeply") from None


def _parse(suffix: str, text: str) -> dict[str, Any]:
    if suffix == ".env":
        return _parse_env(text)
    if suffix == ".json":
        return _as_mapping(_parse_json(text))
    if suffix in (".yaml", ".yml"):
        data = _as_mapping(_parse_yaml(text))
        if "*" in text:  # no alias without one: most files skip the walk
            _refuse_alias_bombs(data)
        return data
    raise FileFormatError(f"unsupported file extension {suffix!r} (use {', '.join(SUFFIXES)})")


def _parse_env(text: str) -> dict[str, Any]:
    # Errors give line numbers only: a line that is not KEY=VALUE may be part of a value
    # (a wrapped key, a base64 block), so even its "key" could be secret.
    lines: dict[str, list[int]] = defaultdict(list)
    values: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw or raw.lstrip().startswith("#"):
            continue
        key, sep, value = raw.partition("=")
        if not sep:
            raise FileFormatError(f"line {lineno}: expected KEY=VALUE")
        if not key.strip():
            raise FileFormatError(f"line {lineno}: empty key")
        if not value:
            raise FileFormatError(f"line {lineno}: no value after '='")
        lines[key.strip()].append(lineno)
        values[key.strip()] = value.strip()
    repeated = sorted(numbers for numbers in lines.values() if len(numbers) > 1)
    if repeated:
        where = "; ".join("lines " + ", ".join(map(str, numbers)) for numbers in repeated)
        raise FileFormatError(f"a key is defined more than once ({where})")
    return values


def _parse_json(text: str) -> Any:
    if not text.strip():
        raise FileFormatError("the file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"invalid JSON at line {exc.lineno} column {exc.colno}") from None


def _parse_yaml(text: str) -> Any:
    import yaml  # the agent extra ships PyYAML; imported here so the config loader stays light

    if not text.strip():
        raise FileFormatError("the file is empty")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # PyYAML's own message quotes the offending line, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise FileFormatError(f"invalid YAML{where}") from None


def _refuse_alias_bombs(data: dict[str, Any]) -> None:
    """Refuse values that aliases repeat past ``MAX_ALIAS_REPEATS``, or make contain themselves."""
    if _alias_repeats(data) > MAX_ALIAS_REPEATS:
        raise FileFormatError(
            f"YAML aliases repeat more than {MAX_ALIAS_REPEATS:,} values (an alias bomb?); "
            "write the values out or use fewer aliases"
        )


_CAP = 1 << 62  # any size past this is too big: keeps the sums small ints


def _children(node: Any) -> list[Any] | None:
    if isinstance(node, dict):
        return [*node.keys(), *node.values()]
    if isinstance(node, (list, set, frozenset)):
        return list(node)
    return None


def _alias_repeats(root: Any) -> int:
    """How many more values ``root`` holds written out than the file spells out.

    Each container is walked once and its written-out size remembered by id, so a repeat costs
    one addition: the walk is as long as the file, never as long as what it expands to.
    """
    sizes: dict[int, int] = {id(root): -1}  # -1: being counted (met again: a cycle)
    frames: list[tuple[Any, list[Any], int]] = [(root, _children(root) or [], 0)]
    totals, spelled = [1], 1
    while frames:
        node, children, at = frames[-1]
        if at == len(children):
            frames.pop()
            size = sizes[id(node)] = min(totals.pop(), _CAP)
            if totals:
                totals[-1] += size
            continue
        frames[-1] = (node, children, at + 1)
        child = children[at]
        spelled += 1  # a value or an alias: one either way
        grandchildren = _children(child)
        known = None if grandchildren is None else sizes.get(id(child))
        if grandchildren is None:
            totals[-1] += 1
        elif known == -1:
            raise FileFormatError("a YAML alias refers to a value that contains it")
        elif known is not None:
            totals[-1] += known
        else:
            sizes[id(child)] = -1
            frames.append((child, grandchildren, 0))
            totals.append(1)
    return sizes[id(root)] - spelled


def _as_mapping(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FileFormatError("the top level must be a mapping of id to value")
    return {str(k): v for k, v in data.items()}
