"""The secrets backend Airflow would build, found as Airflow finds it.

``airflow.cfg`` is ``$AIRFLOW_CONFIG``, else ``$AIRFLOW_HOME/airflow.cfg`` (``~/airflow``). An
option is, first found: ``AIRFLOW__{SECTION}__{KEY}``, its ``_CMD`` variant (for the kwargs,
which Airflow marks sensitive), the file's ``key``, its ``key_cmd``. The file is read as Airflow's
parser reads it: ``%%`` is ``%`` (configparser's interpolation) and a value's ``$VAR`` / ``~``
are expanded (a ``_cmd`` command's are not). The ``_SECRET`` variants
read the secrets backend itself, which is what is being migrated: they stop the command. Per-key
``AIRFLOW__SECRETS__BACKEND_KWARG__<KEY>`` (``AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__<KEY>``)
variables override the JSON's keys with raw strings (apache-airflow-core 3.3's parser).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secrets_agent.backends.migration import MigrationError

# (section, class key, kwargs key) as Airflow 3 reads them; workers fall back to [secrets].
_VARIABLE = re.compile(r"\$(?:(\w+)|\{([^}]*)\})")
SECTIONS = {
    "secrets": ("secrets", "backend", "backend_kwargs"),
    "workers": ("workers", "secrets_backend", "secrets_backend_kwargs"),
}


@dataclass(frozen=True)
class FoundBackend:
    section: str  # the section the class came from: "secrets" or "workers"
    provider_class: str
    kwargs: dict[str, Any]


def config_path(env: Mapping[str, str]) -> Path:
    """``airflow.cfg`` as ``airflow.configuration.get_airflow_config`` finds it."""
    if "AIRFLOW_CONFIG" in env:
        return Path(_expand(env["AIRFLOW_CONFIG"], env))
    home = _expand(env.get("AIRFLOW_HOME", "~/airflow"), env)
    return Path(home) / "airflow.cfg"


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Airflow's expand_env_var: ``$VAR`` and ``~`` expanded until nothing changes."""
    while True:
        expanded = os.path.expanduser(_expandvars(value, env))
        if expanded == value:
            return expanded
        value = expanded


def _expandvars(value: str, env: Mapping[str, str]) -> str:
    """``os.path.expandvars`` against ``env``: unknown variables are left as they are."""
    return _VARIABLE.sub(lambda m: env.get(m[1] or m[2], m[0]), value)


class AirflowSettings:
    """The ``[secrets]`` and ``[workers]`` options of one Airflow installation."""

    def __init__(self, env: Mapping[str, str], cfg: Path | None = None) -> None:
        self.env = dict(env)
        self.cfg_path = cfg or config_path(self.env)
        self._parser = configparser.ConfigParser()  # Airflow's: BasicInterpolation
        self.cfg_exists = True
        try:
            # Opened here: ConfigParser.read skips a file it cannot open, without a word.
            with open(self.cfg_path, encoding="utf-8") as file:
                self._parser.read_file(file)
        except FileNotFoundError:
            if cfg is not None:  # named on the command line: a typo, not a file-less Airflow
                raise MigrationError(f"--airflow-config: {self.cfg_path} does not exist") from None
            self.cfg_exists = False  # Airflow runs on its defaults and variables then
        except OSError as exc:
            raise MigrationError(f"{self.cfg_path}: cannot read ({exc.strerror})") from None
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise MigrationError(
                f"{self.cfg_path}: cannot be parsed ({type(exc).__name__})"
            ) from None

    def get(self, section: str, key: str, sensitive: bool = False) -> str | None:
        name = f"AIRFLOW__{section.upper()}__{key.upper()}"
        if name in self.env:
            return _expand(self.env[name], self.env)
        if sensitive and f"{name}_CMD" in self.env:
            return _run(self.env[f"{name}_CMD"], f"{name}_CMD")
        if sensitive and f"{name}_SECRET" in self.env:
            raise _secret_variant(f"{name}_SECRET")
        if self._parser.has_option(section, key):
            return _expand(self._from_file(section, key), self.env)
        if sensitive and self._parser.has_option(section, f"{key}_cmd"):
            return _run(self._from_file(section, f"{key}_cmd"), f"[{section}] {key}_cmd")
        if sensitive and self._parser.has_option(section, f"{key}_secret"):
            raise _secret_variant(f"[{section}] {key}_secret")
        return None

    def _from_file(self, section: str, key: str) -> str:
        try:
            return self._parser.get(section, key)
        except configparser.InterpolationError:
            # Airflow fails on it too (at its first read of the option); the value may be secret.
            raise MigrationError(
                f"{self.cfg_path}: [{section}] {key} cannot be read as Airflow reads it: a "
                "'%' must be written '%%' in airflow.cfg"
            ) from None

    def per_key_variables(self) -> list[str]:
        """Every per-key kwargs variable set, both sections': Airflow would add them to the
        client's kwargs as well, which the client refuses."""
        prefixes = tuple(
            _per_key_prefix(section, kwargs) for section, _, kwargs in SECTIONS.values()
        )
        return sorted(
            name
            for name in self.env
            if any(name.startswith(p) and name[len(p) :] for p in prefixes)  # Airflow's rule
        )

    def backend(self, which: str) -> FoundBackend | None:
        """The backend Airflow builds for ``which`` ("secrets" or "workers"), or None."""
        section, class_key, kwargs_key = SECTIONS[which]
        provider_class = (self.get(section, class_key) or "").strip()
        if not provider_class and which == "workers":
            return self.backend("secrets")  # as Airflow: workers fall back to [secrets]
        if not provider_class:
            return None
        raw = self.get(section, kwargs_key, sensitive=True) or ""
        try:
            # Airflow builds the backend with no kwargs for any empty value (``null``, ``[]``).
            kwargs = (json.loads(raw) if raw.strip() else {}) or {}
        except ValueError:
            # Airflow logs a warning and builds the backend with no kwargs: surely not meant.
            raise MigrationError(
                f"[{section}] {kwargs_key} is not valid JSON (Airflow would ignore it all)"
            ) from None
        if not isinstance(kwargs, dict):
            raise MigrationError(f"[{section}] {kwargs_key} is not a JSON object")
        prefix = _per_key_prefix(section, kwargs_key)
        for name, value in self.env.items():
            if name.startswith(prefix) and name[len(prefix) :]:
                kwargs[name[len(prefix) :].lower()] = value
        return FoundBackend(section, provider_class, kwargs)


def _per_key_prefix(section: str, kwargs_key: str) -> str:
    """``AIRFLOW__SECRETS__BACKEND_KWARG__`` / ``AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__``."""
    return f"AIRFLOW__{section.upper()}__{kwargs_key.upper().replace('_KWARGS', '_KWARG')}__"


def _run(command: str, where: str) -> str:
    """Airflow's run_command: shlex-split, no shell; a failure stops (its output may be secret)."""
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, timeout=60, check=False)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise MigrationError(f"{where}: cannot run the command ({type(exc).__name__})") from None
    if done.returncode != 0:
        raise MigrationError(f"{where}: the command exited {done.returncode}")
    return done.stdout.decode(errors="ignore")


def _secret_variant(where: str) -> MigrationError:
    return MigrationError(
        f"{where}: the kwargs are kept in the secrets backend itself; read them out and "
        "pass them in AIRFLOW__SECRETS__BACKEND_KWARGS to this command"
    )
