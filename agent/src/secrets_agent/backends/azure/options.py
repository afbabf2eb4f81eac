"""Config of the ``azure_key_vault`` backend."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from secrets_agent.backends.azure.feed import StorageQueueFeedOptions
from secrets_agent.backends.azure.names import SECRET_NAMES
from secrets_agent.backends.feeds import named_by
from secrets_agent.backends.namespaces import Naming
from secrets_agent.backends.prefixes import legacy_empty_prefixes
from secrets_agent.config.validators import check_authority, check_https_url, setting
from secrets_agent.kinds import KIND_BY_SEGMENT, Kind, per_kind

TEAM_SEP = "--"  # the provider's separator between a team and the id (key_vault.py)
KINDS = tuple(KIND_BY_SEGMENT)  # a provider's ``*_prefix = None`` is the kind left out of kinds


@dataclass(frozen=True)
class AzureOptions:
    vault_url: str = setting(check=check_https_url)
    # Same names, defaults and meaning as Airflow's AzureKeyVaultBackend: trailing separators
    # are dropped, "" means the id alone; a kind left out of ``kinds`` is the prefix None.
    connections_prefix: str = "airflow-connections"
    variables_prefix: str = "airflow-variables"
    config_prefix: str = "airflow-config"
    sep: str = "-"
    kinds: tuple[str, ...] = setting(KINDS, choices=KINDS)
    # Airflow 3 multi-team: ``{prefix}{sep}{team}--{id}`` first, then the global name.
    team_layout: bool = False
    # Credentials: a service principal when all three are set, else DefaultAzureCredential
    # (environment, workload identity, managed identity, Azure CLI), as the provider does.
    tenant_id: str = ""
    client_id: str = ""
    client_secret_file: str = setting("", path=True)  # a file, so no secret sits in the config
    managed_identity_client_id: str = ""
    workload_identity_tenant_id: str = ""
    # Reaching a sovereign cloud, a private endpoint or (in tests) loopback.
    authority_host: str = setting(
        "", check=check_authority
    )  # default: AZURE_AUTHORITY_HOST, else login.microsoftonline.com
    disable_instance_discovery: bool = False
    ca_file: str = setting("", path=True)  # extra root CA for the vault and the authority
    verify_challenge_resource: bool = True
    api_version: str = ""  # default: the SDK's
    timeout: float = setting(10.0, min=0.1, max=300.0)
    connect_timeout: float = setting(5.0, min=0.1, max=300.0)
    retries: int = setting(3, min=0, max=10)  # azure-core's retries (429, 5xx, connection)
    backoff_initial: float = setting(0.8, min=0.0, max=60.0)
    backoff_max: float = setting(10.0, min=0.01, max=300.0)
    # Change events from a Storage queue ([backends.feed]; docs/change-feeds.md).
    feed: StorageQueueFeedOptions | None = None

    def prefix(self, kind: Kind) -> str:
        """The prefix as the provider keeps it: ``rstrip(sep)`` ("airflow-connections-" reads
        ``airflow-connections-<id>``, not ``airflow-connections--<id>``)."""
        value: str = per_kind(self, kind, "{}_prefix")
        return value.rstrip(self.sep) if value else value

    def serves(self, kind: Kind) -> bool:
        return kind.plural in self.kinds

    def _name(self, prefix: str, rest: str) -> str:
        # The provider's build_path: no separator after an empty prefix, and Key Vault names
        # allow no "_", so every "_" becomes sep.
        return (f"{prefix}{self.sep}{rest}" if prefix else rest).replace("_", self.sep)

    def secret_name(self, kind: Kind, secret_id: str) -> str | None:
        """The global name; None when the kind is off or Key Vault cannot hold the name."""
        if not self.serves(kind):
            return None
        if self.team_layout and TEAM_SEP in secret_id.replace("_", self.sep):
            # Ambiguous: team "a" + id "b--c" is team "a--b" + id "c". Refused for config
            # keys too, as the provider (microsoft-azure 15.2) refuses them.
            return None
        name = self._name(self.prefix(kind), secret_id)
        return name if SECRET_NAMES.holds(name) else None

    def team_secret_name(self, kind: Kind, secret_id: str, team: str) -> str | None:
        """The team-scoped name tried before the global one (config values have no team)."""
        if not self.team_layout or kind is Kind.CONFIG or self.secret_name(kind, secret_id) is None:
            return None
        name = self._name(self.prefix(kind), f"{team}{TEAM_SEP}{secret_id}")
        return name if SECRET_NAMES.holds(name) else None

    def supports(self, kind: Kind) -> bool:
        return self.serves(kind)

    def naming(self) -> Naming:
        # Key Vault names ignore case ("_" already became sep in the name).
        return Naming(named_by(self.secret_name, self.team_secret_name), fold=str.lower)

    def notices(self, explicit: frozenset[str]) -> list[tuple[str, str]]:
        """Keys a config written before ``kinds`` existed may rely on the old meaning of."""
        return legacy_empty_prefixes(self, explicit, "the id alone as the name")

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        url = urlsplit(self.vault_url)
        if url.scheme != "https" or not url.hostname or url.path not in ("", "/"):
            problems.append(("vault_url", "must be https://<vault-name>.vault.azure.net"))
        if not re.fullmatch(r"[0-9a-zA-Z-]*", self.sep):
            problems.append(("sep", "may only use letters, digits and -"))
        for kind in Kind:
            prefix = self.prefix(kind).replace("_", self.sep)
            if self.serves(kind) and prefix and not SECRET_NAMES.holds(prefix):
                problems.append((f"{kind.plural}_prefix", "may only use letters, digits, - and _"))
        for key in ("tenant_id", "workload_identity_tenant_id"):
            if not re.fullmatch(r"[A-Za-z0-9.-]*", getattr(self, key)):
                problems.append((key, "may only use letters, digits, - and . (a tenant id)"))
        principal = (self.tenant_id, self.client_id, self.client_secret_file)
        if any(principal) and not all(principal):
            problems.append(
                ("client_secret_file", "a service principal needs tenant_id, client_id and this")
            )
        if self.backoff_initial > self.backoff_max:
            problems.append(("backoff_initial", "must not exceed backoff_max"))
        return problems
