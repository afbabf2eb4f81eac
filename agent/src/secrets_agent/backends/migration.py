"""From an Airflow provider's ``backend_kwargs`` to a ``[[backends]]`` table: one interface.

Each backend translates its provider's kwargs beside itself (``vault/migrate.py``, ...); the
``migrate`` command finds the kwargs, picks the translator by the provider's class and writes
what it returns. Credentials never land in ``options``: a translator hands them over as
``Credential`` values, which the command writes to files of their own (mode 0600) and
references by path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from secrets_agent.errors import AgentError
from secrets_agent.kinds import Kind

MISSING: Any = object()
# A to-do naming a credential file the command writes says its directory so; the command
# prints the absolute path (the agent would read a relative one from its working directory).
CREDENTIALS_DIR = "<credentials>"


class MigrationError(AgentError):
    """The kwargs cannot be migrated safely or unambiguously; the message says what to do."""


@dataclass(frozen=True)
class Credential:
    """A secret found in the kwargs, to be written to ``file_name`` (0600), never printed."""

    file_name: str
    value: str


@dataclass
class Translation:
    """A ``[[backends]]`` table, its credentials (option path → secret), and what is left."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)
    credentials: dict[tuple[str, ...], Credential] = field(default_factory=dict)
    todo: list[tuple[str, str]] = field(default_factory=list)  # (kwarg, what to do)
    # Option → the kwarg it came from, where the names differ: an option the agent's config
    # loader refuses is reported under the Airflow setting the user wrote.
    origins: dict[str, str] = field(default_factory=dict)
    # The provider's own switch for team-scoped names, where the kwargs set it (Vault's
    # use_team_secrets_path; None: not set, on by default). [core] multi_team gates it.
    team_paths: bool | None = None
    # Why that switch could not be read (a string the provider reads as true whatever it
    # says): refused only where it matters, with [core] multi_team on.
    team_paths_unclear: str = ""


class Kwargs:
    """The provider's kwargs, taken one by one; what no translator takes is listed as a to-do."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = dict(raw)

    def has(self, key: str) -> bool:
        return key in self._raw

    def take(self, key: str, default: Any = MISSING) -> Any:
        return self._raw.pop(key, default)

    def text(self, key: str, default: str = "") -> str:
        """A string option; per-key environment variables give every value as a string."""
        value = self._raw.pop(key, default)
        if value is None:
            return default
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise MigrationError(f"{key}: expected a string, got {type(value).__name__}")
        return str(value)

    def separator(self) -> str | None:
        """``sep``, where given: the providers fail on null (``"_".replace("_", None)``,
        names such as ``airflow-connectionsNoneid``), so it is no value to translate."""
        if self._raw.get("sep", "") is None:
            raise MigrationError("sep: null is no separator the provider can use; give a string")
        return self.text("sep") if self.has("sep") else None

    def flag(self, key: str, default: bool) -> bool:
        value = self._raw.pop(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise MigrationError(f"{key}: expected true or false")

    def truth(self, key: str, default: bool) -> bool:
        """A switch the provider tests for truth (``if self.flag``), not parses.

        Per-key variables give strings, and to the provider any non-empty string is true,
        ``"false"`` too: a string is taken only where both readings agree.
        """
        value = self._raw.pop(key, default)
        if not isinstance(value, str):
            return bool(value)
        if value.strip().lower() in ("", "true", "t", "1", "yes", "on"):
            return bool(value)
        raise MigrationError(
            f"{key}: the provider reads any non-empty string as true, this one too; "
            "give JSON true or false in the backend kwargs"
        )

    def number(self, key: str, default: int) -> int:
        value = self._raw.pop(key, default)
        try:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise MigrationError(f"{key}: expected a whole number") from None

    def rest(self) -> list[str]:
        return sorted(self._raw)


def take_prefixes(
    kwargs: Kwargs,
    translation: Translation,
    name: str,
    defaults: dict[Kind, str],
    lists: bool = False,
) -> None:
    """Per-kind prefixes (or paths): ``None`` turns the kind off, other values carry over.

    ``lists``: the provider also takes a list (fallbacks tried in order, Vault's paths).
    """
    kinds = []
    for kind in Kind:
        key = name.format(kind.plural)
        value = kwargs.take(key, defaults[kind])
        if value is None:
            continue
        if lists and isinstance(value, list | tuple):
            raise MigrationError(
                f"{key}: a list has no single equivalent; use one "
                "[[backends]] table per value, in the same order"
            )
        if not isinstance(value, str):
            raise MigrationError(
                f"{key}: expected a string, or null to leave {kind.plural} out; "
                f"got {_json_type(value)}"
            )
        kinds.append(kind.plural)
        if value != defaults[kind]:
            translation.options[key] = value
    # Written whenever a kind is off or a prefix is "": it says the config means "" as the
    # provider does (check-config warns about "" without ``kinds``, the old meaning).
    if len(kinds) < len(Kind) or "" in translation.options.values():
        translation.options["kinds"] = kinds


def _json_type(value: Any) -> str:
    """A kwarg's type as the user wrote it (JSON), not as Python names it."""
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list"}
    return names.get(type(value), "an object")


def leftovers(kwargs: Kwargs, translation: Translation, why: str) -> None:
    """Every kwarg no translator took, listed with ``why``."""
    for key in kwargs.rest():
        translation.todo.append((key, why))


Translator = Callable[[Kwargs], Translation]

# Provider class → "module:function", relative to secrets_agent.backends.
TRANSLATORS = {
    "airflow.providers.hashicorp.secrets.vault.VaultBackend": "vault.migrate:translate",
    "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend": (
        "aws.migrate:translate_secrets_manager"
    ),
    "airflow.providers.amazon.aws.secrets.systems_manager.SystemsManagerParameterStoreBackend": (
        "aws.migrate:translate_ssm"
    ),
    "airflow.providers.google.cloud.secrets.secret_manager.CloudSecretManagerBackend": (
        "gcp.migrate:translate"
    ),
    "airflow.providers.microsoft.azure.secrets.key_vault.AzureKeyVaultBackend": (
        "azure.migrate:translate"
    ),
    "airflow.secrets.local_filesystem.LocalFilesystemBackend": "file.migrate:translate",
}


# Airflow 2's deprecated ``airflow.contrib.secrets`` paths, which it still imports (with a
# warning) as the providers' classes; Airflow 3 dropped them.
ALIASES = {
    "airflow.contrib.secrets.hashicorp_vault.VaultBackend": (
        "airflow.providers.hashicorp.secrets.vault.VaultBackend"
    ),
    "airflow.contrib.secrets.aws_secrets_manager.SecretsManagerBackend": (
        "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
    ),
    "airflow.contrib.secrets.aws_systems_manager.SystemsManagerParameterStoreBackend": (
        "airflow.providers.amazon.aws.secrets.systems_manager.SystemsManagerParameterStoreBackend"
    ),
    "airflow.contrib.secrets.gcp_secrets_manager.CloudSecretManagerBackend": (
        "airflow.providers.google.cloud.secrets.secret_manager.CloudSecretManagerBackend"
    ),
    "airflow.contrib.secrets.gcp_secrets_manager.CloudSecretsManagerBackend": (
        "airflow.providers.google.cloud.secrets.secret_manager.CloudSecretManagerBackend"
    ),
    "airflow.contrib.secrets.azure_key_vault.AzureKeyVaultBackend": (
        "airflow.providers.microsoft.azure.secrets.key_vault.AzureKeyVaultBackend"
    ),
}


def translator(provider_class: str) -> Translator:
    """The translator for ``provider_class``; ``MigrationError`` for a class none handles."""
    given = provider_class.strip()
    path = TRANSLATORS.get(ALIASES.get(given, given))
    if path is None:
        known = "\n  ".join(sorted(TRANSLATORS))
        raise MigrationError(
            f"no translation for the backend class {provider_class.strip()!r}; supported:\n  "
            + known
        )
    module, _, name = path.partition(":")
    found: Translator = getattr(importlib.import_module(f"secrets_agent.backends.{module}"), name)
    return found


def translate(provider_class: str, kwargs: dict[str, Any]) -> Translation:
    return translator(provider_class)(Kwargs(kwargs))
