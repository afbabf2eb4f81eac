"""Parsers for Airflow's LocalFilesystemBackend file formats: .env, .json, .yaml."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

SUFFIXES = (".env", ".json", ".yaml", ".yml")


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
        return _as_mapping(_parse_yaml(text))
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


def _as_mapping(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FileFormatError("the top level must be a mapping of id to value")
    return {str(k): v for k, v in data.items()}
