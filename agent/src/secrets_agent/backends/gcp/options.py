"""Config of the ``gcp_secret_manager`` backend."""

from __future__ import annotations

import re
from dataclasses import dataclass

from secrets_agent.backends.feeds import named_by
from secrets_agent.backends.gcp.feed import PubSubFeedOptions
from secrets_agent.backends.gcp.names import SECRET_NAMES
from secrets_agent.backends.namespaces import Naming
from secrets_agent.backends.prefixes import legacy_empty_prefixes
from secrets_agent.config.validators import check_host_port, setting
from secrets_agent.kinds import KIND_BY_SEGMENT, Kind, per_kind

TEAM_SEP = "--"  # the provider's separator between a team and the id (secret_manager.py)
KINDS = tuple(KIND_BY_SEGMENT)  # a provider's ``*_prefix = None`` is the kind left out of kinds
PREFIX_CHARS = re.compile(r"[a-zA-Z0-9_-]*")  # the provider's check of prefix + sep


@dataclass(frozen=True)
class GcpOptions:
    # Same names, defaults and meaning as Airflow's CloudSecretManagerBackend: the name is
    # ``{prefix}{sep}{id}``, so "" reads ``{sep}{id}`` (the provider's build_path); a kind left
    # out of ``kinds`` is the provider's prefix None.
    connections_prefix: str = "airflow-connections"
    variables_prefix: str = "airflow-variables"
    config_prefix: str = "airflow-config"
    sep: str = "-"
    kinds: tuple[str, ...] = setting(KINDS, choices=KINDS)
    project_id: str = ""  # default: the project the credentials carry
    version: str = "latest"
    # Airflow 3 multi-team: ``{prefix}{sep}{team}--{id}`` first, then the global name.
    team_layout: bool = False
    # Credentials: Application Default Credentials unless a file is named.
    credentials_file: str = setting("", path=True)
    impersonation_chain: tuple[str, ...] = ()
    api_endpoint: str = setting("", check=check_host_port)  # host[:port], e.g. a regional endpoint
    ca_file: str = setting("", path=True)  # extra root CA for api_endpoint (private endpoints)
    timeout: float = setting(10.0, min=0.1, max=300.0)
    backoff_initial: float = setting(0.1, min=0.01, max=60.0)
    backoff_max: float = setting(5.0, min=0.01, max=300.0)
    retry_deadline: float = setting(30.0, min=0.1, max=600.0)
    # Change events from a Pub/Sub subscription ([backends.feed]; docs/change-feeds.md).
    feed: PubSubFeedOptions | None = None

    def prefix(self, kind: Kind) -> str:
        value: str = per_kind(self, kind, "{}_prefix")
        return value

    def serves(self, kind: Kind) -> bool:
        return kind.plural in self.kinds

    def secret_name(self, kind: Kind, secret_id: str) -> str | None:
        """The provider's ``build_path``; None when the kind is off or the name is impossible."""
        if not self.serves(kind):
            return None
        if self.team_layout and kind is not Kind.CONFIG and TEAM_SEP in secret_id:
            return None  # ambiguous: team "a" + id "b--c" is team "a--b" + id "c"
        name = f"{self.prefix(kind)}{self.sep}{secret_id}"
        return name if SECRET_NAMES.holds(name) else None

    def team_secret_name(self, kind: Kind, secret_id: str, team: str) -> str | None:
        """The team-scoped name tried first; the id is kept verbatim, as the provider does."""
        if not self.team_layout or kind is Kind.CONFIG or self.secret_name(kind, secret_id) is None:
            return None
        name = f"{self.prefix(kind)}{self.sep}{team}{TEAM_SEP}{secret_id}"
        return name if SECRET_NAMES.holds(name) else None

    def naming(self) -> Naming:
        return Naming(named_by(self.secret_name, self.team_secret_name))

    def notices(self, explicit: frozenset[str]) -> list[tuple[str, str]]:
        """Keys a config written before ``kinds`` existed may rely on the old meaning of."""
        return legacy_empty_prefixes(self, explicit, f"the name {self.sep}<id>")

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        # Checked apart (the name is prefix + sep + id, which the provider checks whole), so
        # the error names the key that holds the character, not the three prefixes.
        if not PREFIX_CHARS.fullmatch(self.sep):
            problems.append(("sep", "may only use letters, digits, - and _"))
        for kind in Kind:
            if self.serves(kind) and not PREFIX_CHARS.fullmatch(self.prefix(kind)):
                problems.append((f"{kind.plural}_prefix", "may only use letters, digits, - and _"))
        if not re.fullmatch(r"latest|[1-9][0-9]*", self.version):
            problems.append(("version", 'must be "latest" or a version number'))
        if self.backoff_initial > self.backoff_max:
            problems.append(("backoff_initial", "must not exceed backoff_max"))
        return problems
