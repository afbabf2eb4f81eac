"""Backend types by the name used in ``[[backends]] type = ...``.

The cloud SDKs (hvac, aioboto3, google-cloud, azure) take most of a second to import, so a
type's backend module is imported only when a backend of that type is created. Its options
class (a plain dataclass, SDK-free) is what the config loader needs, and it loads on its own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from secrets_agent.backends.base import Backend, BackendContext
from secrets_agent.backends.env import EnvBackend
from secrets_agent.backends.file.backend import FileBackend
from secrets_agent.config.schema import BackendConfig

_PACKAGE = "secrets_agent.backends"


@dataclass(frozen=True)
class LazyBackend:
    """A backend type whose module (and SDK) is imported on first use."""

    type_name: str
    options: str  # "module:Class", relative to secrets_agent.backends
    backend: str

    @property
    def Options(self) -> type:
        cls: type = _load(self.options)
        return cls

    def load(self) -> type[Backend]:
        cls: type[Backend] = _load(self.backend)
        return cls


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(f"{_PACKAGE}.{module}"), name)


BACKEND_TYPES: dict[str, type[Backend] | LazyBackend] = {
    EnvBackend.type_name: EnvBackend,
    FileBackend.type_name: FileBackend,
    "vault": LazyBackend("vault", "vault.options:VaultOptions", "vault.backend:VaultBackend"),
    "aws_secrets_manager": LazyBackend(
        "aws_secrets_manager",
        "aws.options:SecretsManagerOptions",
        "aws.secrets_manager:SecretsManagerBackend",
    ),
    "aws_ssm": LazyBackend("aws_ssm", "aws.options:SsmOptions", "aws.ssm:SsmBackend"),
    "gcp_secret_manager": LazyBackend(
        "gcp_secret_manager", "gcp.options:GcpOptions", "gcp.backend:GcpSecretManagerBackend"
    ),
    "azure_key_vault": LazyBackend(
        "azure_key_vault", "azure.options:AzureOptions", "azure.backend:AzureKeyVaultBackend"
    ),
}


def backend_class(type_name: str) -> type[Backend]:
    entry = BACKEND_TYPES[type_name]
    return entry.load() if isinstance(entry, LazyBackend) else entry


def create_backend(config: BackendConfig, context: BackendContext) -> Backend:
    return backend_class(config.common.type)(config.common.name, config.options, context)
