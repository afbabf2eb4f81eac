"""Config of the ``aws_secrets_manager`` and ``aws_ssm`` backends."""

from __future__ import annotations

from dataclasses import dataclass, field

from secrets_agent.backends.aws.feed import SqsFeedOptions
from secrets_agent.backends.aws.names import PARAMETER_NAMES, SECRET_NAMES
from secrets_agent.backends.feeds import named_by
from secrets_agent.backends.names import NameRules
from secrets_agent.backends.namespaces import Naming
from secrets_agent.config.validators import check_http_url, check_session_name, setting
from secrets_agent.kinds import KIND_BY_SEGMENT, Kind, per_kind

# The provider's extra_conn_words keys are connection fields; "user"/"pass" are its aliases.
CONN_FIELDS = ("login", "password", "host", "port", "schema", "conn_type", "extra")
# What ``kinds`` may list; a provider's ``*_prefix = None`` is the kind left out of ``kinds``.
KINDS = tuple(KIND_BY_SEGMENT)
# The amazon provider's separator between a team and the id (secrets_manager.py TEAM_SEP).
TEAM_SEP = "--"


@dataclass(frozen=True)
class AwsOptions:
    # Credentials come from the default chain (env, profile, web identity/IRSA, container and
    # instance roles); these only narrow or redirect it.
    region: str = ""
    profile: str = ""
    # A shared-credentials file (INI, as ~/.aws/credentials) read instead of
    # $AWS_SHARED_CREDENTIALS_FILE / ~/.aws/credentials; ``profile`` picks its section.
    credentials_file: str = setting("", path=True)
    endpoint_url: str = ""
    role_arn: str = ""
    role_session_name: str = setting("airflow-secrets-agent", check=check_session_name)
    sts_endpoint_url: str = ""
    connections_prefix: str = ""
    variables_prefix: str = ""
    config_prefix: str = ""
    sep: str = "/"
    kinds: tuple[str, ...] = setting(KINDS, choices=KINDS)
    # Airflow 3 multi-team, as the provider names team secrets (apache/airflow #65703):
    # ``{prefix}{sep}{team}--{id}`` first, then the global ``{prefix}{sep}{id}``.
    team_layout: bool = False
    connect_timeout: float = setting(5.0, min=0.1, max=120.0)
    read_timeout: float = setting(10.0, min=0.1, max=300.0)
    # botocore's "standard" retry mode: exponential backoff with jitter, bounded attempts.
    max_attempts: int = setting(4, min=1, max=20)
    prefetch_connections: tuple[str, ...] = ()
    prefetch_variables: tuple[str, ...] = ()
    prefetch_config: tuple[str, ...] = ()
    # Change events from an SQS queue ([backends.feed]; docs/change-feeds.md).
    feed: SqsFeedOptions | None = None

    def prefix(self, kind: Kind) -> str:
        value: str = per_kind(self, kind, "{}_prefix")
        return value

    def prefetch(self, kind: Kind) -> tuple[str, ...]:
        value: tuple[str, ...] = per_kind(self, kind, "prefetch_{}")
        return value

    def serves(self, kind: Kind) -> bool:
        return kind.plural in self.kinds

    def name_for(self, kind: Kind, secret_id: str) -> str | None:
        """The upstream name, as the provider builds it; None when the kind is off."""
        if not self.serves(kind):
            return None
        if self.team_layout and TEAM_SEP in secret_id:
            return None  # ambiguous: team "a" + id "b--c" is team "a--b" + id "c" (#71078)
        # As the provider: a trailing separator is dropped, and "" means the id alone. A name
        # the service cannot hold is a miss with no call (it would answer ValidationException).
        return self._held(self._join(self.prefix(kind), secret_id))

    def team_name_for(self, kind: Kind, secret_id: str, team: str) -> str | None:
        """The team-scoped name tried first; None when there is none to try."""
        if not self.team_layout or kind is Kind.CONFIG or self.name_for(kind, secret_id) is None:
            return None
        return self._held(
            self._join(self.prefix(kind), f"{team}{TEAM_SEP}{secret_id}", team_scoped=True)
        )

    def naming(self) -> Naming:
        return Naming(named_by(self.name_for, self.team_name_for))

    def _held(self, name: str | None) -> str | None:
        return name if name is not None and self.names().holds(name) else None

    def names(self) -> NameRules:
        """What the service can hold: Secrets Manager's names (Parameter Store overrides it)."""
        return SECRET_NAMES

    def _join(self, prefix: str, secret_id: str, team_scoped: bool = False) -> str | None:
        prefix = prefix.rstrip(self.sep)
        if not prefix:
            # Secrets Manager has no team name without a prefix (``if path_prefix and team``).
            return None if team_scoped else secret_id
        return f"{prefix}{self.sep}{secret_id}"

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        for key in ("endpoint_url", "sts_endpoint_url"):
            reason = check_http_url(getattr(self, key))
            if reason:
                problems.append((key, reason))
        return problems


@dataclass(frozen=True)
class SecretsManagerOptions(AwsOptions):
    connections_prefix: str = "airflow/connections"
    variables_prefix: str = "airflow/variables"
    config_prefix: str = "airflow/config"
    # More names per connection field in JSON secrets, e.g. {login = ["db_user"]}.
    extra_conn_words: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Accepted and ignored, as amazon provider 9.0.0+ ignores it: values are never URL-decoded.
    are_secret_values_urlencoded: bool = False
    # On TTL expiry ask DescribeSecret first; fetch again only if the version changed.
    revalidate: bool = True

    def validate(self) -> list[tuple[str, str]]:
        problems = super().validate()
        unknown = sorted(set(self.extra_conn_words) - set(CONN_FIELDS) - {"user", "pass"})
        if unknown:
            problems.append(
                ("extra_conn_words", f"unknown connection fields: {', '.join(unknown)}")
            )
        return problems


@dataclass(frozen=True)
class SsmOptions(AwsOptions):
    connections_prefix: str = "/airflow/connections"
    variables_prefix: str = "/airflow/variables"
    config_prefix: str = "/airflow/config"

    def names(self) -> NameRules:
        return PARAMETER_NAMES

    def _join(self, prefix: str, secret_id: str, team_scoped: bool = False) -> str | None:
        # Parameter Store names in a hierarchy start with "/"; the provider adds a missing one
        # (so an empty prefix reads "/<id>"), and has team names with any prefix.
        name = f"{prefix.rstrip(self.sep)}{self.sep}{secret_id}"
        return name if name.startswith("/") else "/" + name
