"""Backend types by the name used in ``[[backends]] type = ...``."""

from __future__ import annotations

from secrets_agent.backends.aws.secrets_manager import SecretsManagerBackend
from secrets_agent.backends.aws.ssm import SsmBackend
from secrets_agent.backends.azure.backend import AzureKeyVaultBackend
from secrets_agent.backends.base import Backend, BackendContext
from secrets_agent.backends.env import EnvBackend
from secrets_agent.backends.file.backend import FileBackend
from secrets_agent.backends.gcp.backend import GcpSecretManagerBackend
from secrets_agent.backends.vault.backend import VaultBackend
from secrets_agent.config.schema import BackendConfig

BACKEND_TYPES: dict[str, type[Backend]] = {
    cls.type_name: cls
    for cls in (
        EnvBackend,
        FileBackend,
        VaultBackend,
        SecretsManagerBackend,
        SsmBackend,
        GcpSecretManagerBackend,
        AzureKeyVaultBackend,
    )
}


def create_backend(config: BackendConfig, context: BackendContext) -> Backend:
    return BACKEND_TYPES[config.common.type](config.common.name, config.options, context)
