"""What ``migrate`` is about to write, read first by the agent's own config loader.

The parse ``check-config`` runs, without its machine checks (keys, credential files): the
credential files are written after this, and the config may be meant for another node. Each
problem is reported under the Airflow setting (or command-line option) it came from.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from secrets_agent.backends.migration import MigrationError
from secrets_agent.config.loader import parse_config
from secrets_agent.errors import ConfigError
from secrets_agent.migrate.airflow_settings import SECTIONS, FoundBackend

_BACKEND = "backends[0]."
_INDEX = re.compile(r"\[\d+\]")
_COMMAND_LINE = {"listener.socket_path": "--socket", f"{_BACKEND}name": "--name"}


def check(text: str, base_dir: Path, found: FoundBackend, origins: Mapping[str, str]) -> None:
    """``MigrationError`` naming each setting the agent would refuse; None when it loads."""
    raw = tomllib.loads(text)
    try:
        here = parse_config(raw, base_dir=base_dir)
        # Read again from another directory: what changes is a relative file path, which the
        # agent resolves against its config's directory and Airflow against each process's.
        elsewhere = parse_config(raw, base_dir=base_dir / "elsewhere")
    except ConfigError as exc:
        lines = "\n".join(f"  {_explain(problem, found, origins)}" for problem in exc.problems)
        raise MigrationError(
            f"the agent would refuse the config this translates to; nothing written:\n{lines}"
        ) from None
    moved = _moved(here.backends[0].options, elsewhere.backends[0].options, _BACKEND)
    if moved:
        settings = dict.fromkeys(_setting(path, found, origins) for path in moved)  # cert: two
        lines = "\n".join(
            f"  {setting}: is relative to whatever directory each Airflow process starts in; "
            "give the absolute path"
            for setting in settings
        )
        raise MigrationError(f"a file path cannot be translated; nothing written:\n{lines}")


def _moved(ours: Any, other: Any, where: str) -> list[str]:
    """The option paths (``backends[0].token.token_file``) whose values differ."""
    if dataclasses.is_dataclass(ours) and not isinstance(ours, type):
        return [
            path
            for f in dataclasses.fields(ours)
            for path in _moved(getattr(ours, f.name), getattr(other, f.name), f"{where}{f.name}.")
        ]
    return [] if ours == other else [where.rstrip(".")]


def _explain(problem: str, found: FoundBackend, origins: Mapping[str, str]) -> str:
    path, _, reason = problem.partition(": ")  # the loader's "path: reason", no value in it
    return f"{_setting(path, found, origins)}: cannot be translated (the agent's {path} {reason})"


def _setting(path: str, found: FoundBackend, origins: Mapping[str, str]) -> str:
    if path in _COMMAND_LINE:
        return _COMMAND_LINE[path]
    section, _, kwargs_key = SECTIONS[found.section]
    option = _INDEX.sub("", path.removeprefix(_BACKEND))  # "aws_iam.role_session_name"
    top, leaf = option.split(".")[0], option.split(".")[-1]
    kwarg = origins.get(option) or origins.get(top)
    kwarg = kwarg or next((k for k in (option, leaf, top) if k in found.kwargs), None)
    return f"[{section}] {kwargs_key}" + (f" {kwarg!r}" if kwarg else "")
