"""The agent config as TOML text: strings, numbers, booleans, arrays and inline tables."""

from __future__ import annotations

import json
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else value(name)


def value(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return repr(item)
    if isinstance(item, str):
        # JSON's escapes are TOML's, except that TOML also wants DEL escaped.
        return json.dumps(item, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(item, list | tuple):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + " }"
    raise TypeError(f"cannot write a {type(item).__name__} as TOML")


def table(header: str, options: dict[str, Any]) -> str:
    return "\n".join([header, *(f"{key(k)} = {value(v)}" for k, v in options.items())]) + "\n"
