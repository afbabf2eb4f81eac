"""The agent's configuration as frozen, typed sections; loading and validation live in loader."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from secrets_agent.config.validators import (
    MAX_ID,
    TLS_SCHEMES,
    check_credential_name,
    check_date,
    check_env_name,
    check_glob,
    check_http_url,
    check_key_prefix,
    check_loopback,
    check_name,
    check_octal_mode,
    check_regex,
    check_session_name,
    check_store_url,
    check_team,
    numeric_id,
    resolve_group,
    resolve_user,
    setting,
    socket_path_problem,
)
from secrets_agent.kinds import Kind, per_kind

DEFAULT_SOCKET_PATH = "/run/airflow-secrets-agent/agent.sock"
DAY = 86400.0


@dataclass(frozen=True)
class ListenerConfig:
    socket_path: str = setting(DEFAULT_SOCKET_PATH, optional=True)
    socket_mode: str = setting("0660", check=check_octal_mode)
    socket_group: str = ""
    # None means "the agent's own uid / primary gid"; an explicit empty list allows nobody by it.
    allowed_uids: tuple[int, ...] | None = setting(None, min=0, max=MAX_ID)
    allowed_gids: tuple[int, ...] | None = setting(None, min=0, max=MAX_ID)
    admin_uids: tuple[int, ...] | None = setting(None, min=0, max=MAX_ID)
    # Who else may read ``GET /v1/status`` (``secrets-agent status``: counts and health, never
    # an id or a value), e.g. a monitoring user; admin uids always may.
    status_uids: tuple[int, ...] = setting((), min=0, max=MAX_ID)
    max_request_line: int = setting(8190, min=256, max=65536)
    max_header_size: int = setting(8190, min=256, max=65536)
    max_body_size: int = setting(65536, min=1024, max=1048576)
    shutdown_timeout: float = setting(10.0, min=0.1, max=300.0)
    # Connections open at once; beyond it new ones are closed at once, before any read.
    max_connections: int = setting(4096, min=1, max=1_000_000)
    # A client must send its whole request head within header_timeout seconds of connecting
    # or of its previous answer; an idle keep-alive connection is closed after idle_timeout.
    header_timeout: float = setting(10.0, min=0.1, max=300.0)
    idle_timeout: float = setting(30.0, min=0.1, max=3600.0)
    # Answers a client leaves unread (it stopped reading) for write_timeout seconds: the
    # connection is aborted, so its max_connections slot comes back.
    write_timeout: float = setting(10.0, min=0.1, max=300.0)
    # The event loop: "auto" is uvloop's where installed (less CPU per lookup), else asyncio's.
    event_loop: str = setting("auto", choices=("auto", "uvloop", "asyncio"))
    # Team binding: peer uid / gid (as a string key) -> the teams it may name in ``?team=``.
    # Empty (the default): no binding, ``team`` only selects backends.
    team_uids: dict[str, tuple[str, ...]] = field(default_factory=dict)
    team_gids: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def mode(self) -> int:
        return int(self.socket_mode, 8)

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if reason := socket_path_problem(self.socket_path):  # resolved: the path bound
            problems.append(("socket_path", reason))
        for key in ("team_uids", "team_gids"):
            for peer, teams in getattr(self, key).items():
                if not numeric_id(peer):
                    problems.append((f"{key}.{peer}", "keys must be numeric ids"))
                if any(check_team(team) for team in teams):
                    problems.append((f"{key}.{peer}", "teams must be 1-64 letters, digits, - or _"))
        return problems


@dataclass(frozen=True)
class LogConfig:
    level: str = setting("info", choices=("debug", "info", "warning", "error"))
    format: str = setting("text", choices=("text", "json"))


@dataclass(frozen=True)
class CacheConfig:
    max_entries: int = setting(10000, min=1, max=10_000_000)
    connection_ttl: float = setting(300.0, min=0.0, max=7 * DAY)
    variable_ttl: float = setting(300.0, min=0.0, max=7 * DAY)
    config_ttl: float = setting(300.0, min=0.0, max=7 * DAY)
    negative_ttl: float = setting(30.0, min=0.0, max=DAY)
    max_stale: float = setting(3600.0, min=0.0, max=7 * DAY)
    sweep_interval: float = setting(60.0, min=1.0, max=DAY)
    # Refresh-ahead: a value read during its TTL is refreshed in the background at this share
    # of its TTL (0 = off), spread by +-refresh_jitter of that point.
    refresh_ahead: float = setting(0.8, min=0.0, max=0.95)
    refresh_jitter: float = setting(0.1, min=0.0, max=0.5)
    refresh_concurrency: int = setting(4, min=1, max=256)
    # Refresh-now (Cache-Control: no-cache / ?refresh=true): per key, at most once this often.
    refresh_now_interval: float = setting(30.0, min=1.0, max=DAY)
    # ... and at most this many a minute per peer (uid), and for the whole agent, whatever ids.
    refresh_now_per_peer: int = setting(60, min=1, max=1_000_000)
    refresh_now_total: int = setting(600, min=1, max=1_000_000)
    # Encrypted warm start: the cache written here (needs a configured encryption key).
    snapshot_file: str = setting("", optional=True)
    snapshot_interval: float = setting(300.0, min=1.0, max=DAY)

    def ttl(self, kind: Kind) -> float:
        value: float = getattr(self, f"{kind.value}_ttl")
        return value


@dataclass(frozen=True)
class AuditConfig:
    """The read audit: one JSON line per lookup, never a value (off by default)."""

    output: str = setting("off", choices=("off", "file", "stderr"))
    file: str = setting("", optional=True)
    # Rotate the file past this size (0 = never: leave it to logrotate, which sends SIGHUP).
    max_bytes: int = setting(100 * 1024 * 1024, min=0, max=1 << 40)
    backups: int = setting(5, min=1, max=1000)
    rate_limit: float = setting(1000.0, min=1.0, max=1_000_000.0)

    def validate(self) -> list[tuple[str, str]]:
        if self.output == "file" and not self.file:
            return [("file", 'is required when output = "file"')]
        return []


@dataclass(frozen=True)
class EncryptionConfig:
    key_file: str = setting("", path=True)
    key_env: str = setting("", check=check_env_name)
    credential: str = setting("", check=check_credential_name)


@dataclass(frozen=True)
class MetricsConfig:
    port: int = setting(0, min=0, max=65535)
    address: str = setting("127.0.0.1", check=check_loopback)


# An ElastiCache replication group / serverless cache or a MemoryDB cluster: the signed
# token's host, so nothing that would change the URL's meaning.
CACHE_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")


AWS_STORES = ("elasticache", "memorydb")
# Keys only AWS's token uses (Memorystore's is a Google access token).
_AWS_ONLY = (
    "cache_name",
    "serverless",
    "region",
    "profile",
    "role_arn",
    "role_session_name",
    "sts_endpoint_url",
)


@dataclass(frozen=True)
class StoreIamConfig:
    """``[shared_cache.iam]``: IAM auth tokens instead of a password. ElastiCache and
    MemoryDB: signed with AWS credentials from the default chain (the AWS backends' keys,
    meaning the same), for the IAM-enabled ``username``. Memorystore: a Google access token
    (``credentials_file``: a service-account key, as the GCP backend's; "": ADC)."""

    service: str = setting(choices=(*AWS_STORES, "memorystore"))
    cache_name: str = ""
    serverless: bool = False  # ElastiCache Serverless (the token names its resource type)
    region: str = ""  # the cache's; "": the chain's (AWS_DEFAULT_REGION, profile), else us-east-1
    profile: str = ""
    credentials_file: str = setting("", path=True)
    role_arn: str = ""
    role_session_name: str = setting("airflow-secrets-agent", check=check_session_name)
    sts_endpoint_url: str = setting("", check=check_http_url)

    @property
    def aws(self) -> bool:
        return self.service in AWS_STORES

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.aws and not CACHE_NAME.fullmatch(self.cache_name):
            problems.append(
                ("cache_name", "must be the cache's name: 1-40 lowercase letters, digits and -")
            )
        if self.serverless and self.service != "elasticache":
            problems.append(("serverless", "only ElastiCache has serverless caches"))
        if not self.aws:
            defaults = StoreIamConfig(service=self.service)
            for key in _AWS_ONLY:
                if getattr(self, key) != getattr(defaults, key):
                    problems.append((key, "is for ElastiCache and MemoryDB, not Memorystore"))
        return problems


@dataclass(frozen=True)
class SharedCacheConfig:
    """The fleet tier: one Valkey/Redis that every agent's node-cache misses go through."""

    url: str = setting("", check=check_store_url)  # empty: the tier is off
    ca_file: str = setting("", path=True)
    username: str = ""
    # Prefer password_file: a config file is often world-readable. Not in the repr (a
    # traceback's or a failed assertion's printout of the config), as Vault's inline secrets.
    password: str = field(default="", repr=False)
    password_file: str = setting("", path=True)
    key_prefix: str = setting("airflow-secrets-agent:", check=check_key_prefix)
    # Which agents share entries: the same namespace and keys means the same chain of backends.
    # Empty: derived from the backends' configuration.
    namespace: str = ""
    connect_timeout: float = setting(0.5, min=0.01, max=30.0)
    timeout: float = setting(0.25, min=0.01, max=30.0)
    lock_ttl: float = setting(10.0, min=0.1, max=300.0)
    lock_wait: float = setting(2.0, min=0.0, max=60.0)
    breaker_failures: int = setting(3, min=1, max=1000)
    breaker_cooldown: float = setting(5.0, min=0.1, max=3600.0)
    log_interval: float = setting(60.0, min=1.0, max=DAY)
    iam: StoreIamConfig | None = None  # ElastiCache / MemoryDB IAM auth instead of a password

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.ca_file and not self.url.startswith(TLS_SCHEMES):
            problems.append(
                ("ca_file", "needs a rediss://, rediss+sentinel:// or rediss+cluster:// url (TLS)")
            )
        if self.password and self.password_file:
            problems.append(("password", "set password or password_file, not both"))
        if self.lock_wait > self.lock_ttl:
            problems.append(("lock_wait", "must not exceed lock_ttl"))
        if self.iam is not None:
            if not self.url.startswith(("rediss://", "rediss+cluster://")):
                why = "IAM tokens go over TLS only, to a server or a cluster (no Sentinel)"
                problems.append(("iam", f"needs a rediss:// or rediss+cluster:// url: {why}"))
            if self.iam.aws and not self.username:
                problems.append(("username", "iam needs the IAM-enabled user's name"))
            if not self.iam.aws and self.username:
                problems.append(("username", "Memorystore's IAM token is sent without a username"))
            if self.password or self.password_file:
                problems.append(("iam", "an IAM token replaces the password: set no password"))
        return problems


PRICES_TAKEN = "2026-12-04"


@dataclass(frozen=True)
class PricingConfig:
    """USD per 10,000 upstream API calls, as each manager published them on ``taken``: what
    ``secrets-agent status`` and ``/metrics`` price the calls made and avoided at."""

    taken: str = setting(PRICES_TAKEN, check=check_date)
    aws_secrets_manager: float = setting(0.05, min=0.0)
    aws_ssm: float = setting(0.0, min=0.0)  # standard parameters
    aws_ssm_higher_throughput: float = setting(0.05, min=0.0)
    gcp_secret_manager: float = setting(0.03, min=0.0)  # access operations
    azure_key_vault: float = setting(0.03, min=0.0)  # transactions
    vault: float = setting(0.0, min=0.0)
    # Backend name -> the row above it is priced at (default: its type's; types without a row,
    # such as file and env, cost nothing), e.g. { ssm-prod = "aws_ssm_higher_throughput" }.
    backends: dict[str, str] = field(default_factory=dict)

    def validate(self) -> list[tuple[str, str]]:
        rows = ", ".join(PRICE_ROWS)
        return [
            (f"backends.{name}", f"must name a price row ({rows})")
            for name, row in self.backends.items()
            if row not in PRICE_ROWS
        ]

    def per_call(self, backend_name: str, backend_type: str) -> float:
        """USD one API call to this backend costs (0.0 when the manager charges none)."""
        row = self.backends.get(backend_name, backend_type)
        per_10k: float = getattr(self, row) if row in PRICE_ROWS else 0.0
        return per_10k / 10_000


PRICE_ROWS = tuple(f.name for f in fields(PricingConfig) if f.name not in ("taken", "backends"))


@dataclass(frozen=True)
class BackendCommon:
    """Keys every ``[[backends]]`` entry accepts; the rest belong to the backend's type."""

    name: str = setting(check=check_name)
    type: str = setting()
    connections_lookup_pattern: str = setting("", check=check_regex)
    variables_lookup_pattern: str = setting("", check=check_regex)
    config_lookup_pattern: str = setting("", check=check_regex)
    # Airflow 3 multi-team: when set, only lookups made for one of these teams reach this
    # backend (and lookups for a team reach only backends that list it or list no team).
    teams: tuple[str, ...] = setting((), check=check_team)
    # Seconds one fetch from this backend may take in all, its SDK's retries included: an
    # upstream that never finishes its answer (a trickle inside every read timeout) must not
    # hold the key's lookups for good. Then the lookup fails as transient (stale-on-error).
    deadline: float = setting(120.0, min=0.1, max=3600.0)

    def lookup_pattern(self, kind: Kind) -> str:
        value: str = per_kind(self, kind, "{}_lookup_pattern")
        return value


@dataclass(frozen=True)
class BackendConfig:
    common: BackendCommon
    options: Any  # the dataclass the backend type declares as its ``Options``


@dataclass(frozen=True)
class AccessRule:
    """One ``[[access]]`` rule: who (one of uid, user, gid, group, everyone), which ids of which
    kinds (glob patterns), optionally only for some teams; ``deny`` rules win over allows."""

    uid: int | None = setting(None, min=0, max=MAX_ID)
    user: str = ""
    gid: int | None = setting(None, min=0, max=MAX_ID)  # primary or supplementary
    group: str = ""
    everyone: bool = False  # every peer the socket admits (allowed_uids / allowed_gids)
    effect: str = setting("allow", choices=("allow", "deny"))
    # Shell-style patterns, case-sensitive: * any run of characters (/ included), ? one,
    # [abc] / [!abc] one of a set. Absent: no id of that kind. A deny's patterns (and teams)
    # also match other spellings of the same upstream name (case, - vs _): server.access.
    connections: tuple[str, ...] = setting((), check=check_glob)
    variables: tuple[str, ...] = setting((), check=check_glob)
    config: tuple[str, ...] = setting((), check=check_glob)
    # Only reads made for one of these teams (``?team=``); empty: reads for any team or none.
    teams: tuple[str, ...] = setting((), check=check_team)

    def patterns(self, kind: Kind) -> tuple[str, ...]:
        value: tuple[str, ...] = per_kind(self, kind, "{}")
        return value

    def validate(self) -> list[tuple[str, str]]:
        who = [
            self.uid is not None,
            bool(self.user),
            self.gid is not None,
            bool(self.group),
            self.everyone,
        ]
        if sum(who) != 1:
            return [("", "needs exactly one of uid, user, gid, group or everyone = true")]
        if self.user and resolve_user(self.user) is None:
            return [("user", "no such user on this machine")]
        if self.group and resolve_group(self.group) is None:
            return [("group", "no such group on this machine")]
        if not (self.connections or self.variables or self.config):
            return [("", "names no ids: set connections, variables and/or config")]
        return []


@dataclass(frozen=True)
class AgentConfig:
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    shared_cache: SharedCacheConfig = field(default_factory=SharedCacheConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    backends: tuple[BackendConfig, ...] = ()
    # Empty: no [[access]] rules, every admitted peer reads everything (as before rules existed).
    access: tuple[AccessRule, ...] = ()
    # What the config may not mean any more (a breaking change), said by check-config and run.
    warnings: tuple[str, ...] = field(default=(), compare=False)
