"""Config of a ``type = "vault"`` backend: one typed table per auth method."""

from __future__ import annotations

from dataclasses import dataclass, field

from secrets_agent.backends.namespaces import PROBE, Naming
from secrets_agent.backends.vault.feed import VaultFeedOptions
from secrets_agent.backends.vault.names import SECRET_PATHS
from secrets_agent.config.validators import (
    check_header_value,
    check_http_url,
    check_session_name,
    setting,
    url_problem,
)
from secrets_agent.kinds import KIND_BY_SEGMENT, Kind, per_kind

K8S_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
AUTH_METHODS = ("token", "approle", "jwt", "kubernetes", "userpass", "ldap", "aws_iam", "cert")
KINDS = tuple(KIND_BY_SEGMENT)  # "connections", "variables", "config"


def _mounted_probe(secret_id: str) -> str:
    """Without a mount_point the id's first segment is the mount: probe within that one."""
    return f"{secret_id.partition('/')[0]}/{PROBE}"


@dataclass(frozen=True)
class TokenAuth:
    # Neither set: $VAULT_TOKEN. A token file is re-read on every (re-)login, so a rotated
    # token (e.g. written by another agent) is picked up without a restart.
    token: str = field(default="", repr=False)
    token_file: str = setting("", path=True)


@dataclass(frozen=True)
class AppRoleAuth:
    role_id: str = setting()
    secret_id: str = field(default="", repr=False)
    secret_id_file: str = setting("", path=True)
    mount_point: str = "approle"


@dataclass(frozen=True)
class JwtAuth:
    role: str = setting()
    jwt_file: str = setting(path=True)
    mount_point: str = "jwt"


@dataclass(frozen=True)
class KubernetesAuth:
    role: str = setting()
    token_path: str = setting(K8S_TOKEN_PATH, path=True)
    mount_point: str = "kubernetes"


@dataclass(frozen=True)
class PasswordAuth:
    """userpass and ldap; the password file is re-read on every (re-)login."""

    username: str = setting()
    password: str = field(default="", repr=False)
    password_file: str = setting("", path=True)


@dataclass(frozen=True)
class UserpassAuth(PasswordAuth):
    mount_point: str = "userpass"  # hvac's default, which the provider uses


@dataclass(frozen=True)
class LdapAuth(PasswordAuth):
    mount_point: str = "ldap"


@dataclass(frozen=True)
class AwsIamAuth:
    """Vault's aws method, iam type: a signed STS ``GetCallerIdentity``, made with credentials
    from AWS's default chain, as the AWS backends find them (the same keys, the same meaning)."""

    role: str = ""  # "": Vault's default, the IAM principal's name
    mount_point: str = "aws"
    # The region the request is signed for; "": the chain's (AWS_DEFAULT_REGION, the profile), else
    # us-east-1 (hvac's). Vault checks it against its own STS region.
    region: str = ""
    # X-Vault-AWS-IAM-Server-ID, for a mount with iam_server_id_header_value (replay guard).
    header_value: str = setting("", check=check_header_value)
    profile: str = ""
    credentials_file: str = setting("", path=True)
    role_arn: str = ""  # assumed first (the provider's assume_role_kwargs RoleArn)
    role_session_name: str = setting("airflow-secrets-agent", check=check_session_name)
    sts_endpoint_url: str = setting("", check=check_http_url)  # for AssumeRole (Vault: its own)


@dataclass(frozen=True)
class CertAuth:
    """Vault's cert method: the TLS client certificate (the backend's ``client_cert`` and
    ``client_key``) is the credential."""

    name: str = ""  # the certificate role to match; "": any role whose CA signed it
    mount_point: str = "cert"


@dataclass(frozen=True)
class VaultOptions:
    url: str = setting()
    namespace: str = ""
    auth_method: str = setting("token", choices=AUTH_METHODS)
    token: TokenAuth | None = None
    approle: AppRoleAuth | None = None
    jwt: JwtAuth | None = None
    kubernetes: KubernetesAuth | None = None
    userpass: UserpassAuth | None = None
    ldap: LdapAuth | None = None
    aws_iam: AwsIamAuth | None = None
    cert: CertAuth | None = None
    # Same names and defaults as the Airflow provider. mount_point "" is the provider's None
    # (the mount is the secret id's first segment); a path "" means the id alone; a kind left
    # out of ``kinds`` is the provider's path None.
    mount_point: str = "secret"
    connections_path: str = "connections"
    variables_path: str = "variables"
    config_path: str = "config"
    kinds: tuple[str, ...] = setting(KINDS, choices=KINDS)
    # Airflow 3 multi-team, as the provider names team secrets (apache/airflow #65493):
    # ``{mount}/{path}/{team}/{key}`` first, then the global ``{mount}/{path}/{key}``.
    team_layout: bool = False
    kv_engine_version: int = setting(2, min=1, max=2)
    # TLS
    verify: bool = True
    ca_file: str = setting("", path=True)
    client_cert: str = setting("", path=True)
    client_key: str = setting("", path=True)
    # Behaviour
    timeout: float = setting(10.0, min=0.1, max=300.0)
    max_workers: int = setting(4, min=1, max=64)
    renew_fraction: float = setting(2 / 3, min=0.1, max=0.95)
    backoff_initial: float = setting(1.0, min=0.01, max=60.0)
    backoff_max: float = setting(60.0, min=0.1, max=3600.0)
    # Change detection by polling ([backends.feed]; docs/change-feeds.md).
    feed: VaultFeedOptions | None = None

    def serves(self, kind: Kind) -> bool:
        return kind.plural in self.kinds

    def path(self, kind: Kind) -> str:
        value: str = per_kind(self, kind, "{}_path")
        return value

    def location(
        self, kind: Kind, secret_id: str, team: str | None = None
    ) -> tuple[str, str] | None:
        """(mount, path) as the provider's ``_get_secret_with_base``; None when it reads nothing."""
        if not self.serves(kind):
            return None
        base = self.path(kind).strip("/")
        mount = self.mount_point.strip("/")
        if not mount:
            # The provider's mount_point=None: the mount is the secret id's first segment
            # (Variable.get("airflow/hello") reads mount "airflow"); an id without one is a miss.
            mount, _, secret_id = secret_id.partition("/")
            if not secret_id:
                return None
        if self.team_layout and kind is not Kind.CONFIG:
            if team is None and "/" in secret_id:
                return None  # "team_a/x" read with no team would reach into team_a's secrets
            if team is not None:
                base = f"{base}/{team}" if base else team
        elif team is not None:
            return None  # no team layout: only the global path
        path = f"{base}/{secret_id}" if base else secret_id
        # A path Vault cannot hold is a miss with no call, not its 400 turned into a 502.
        return (mount, path) if SECRET_PATHS.holds(f"{mount}/{path}") else None

    def naming(self) -> Naming:
        def named(kind: Kind, secret_id: str, team: str | None) -> str | None:
            where = self.location(kind, secret_id, team)
            return None if where is None else "/".join(where)

        return Naming(
            named,
            key="{}_path",
            remedy="give each kind a path outside the others', or leave one out of kinds",
            probe=None if self.mount_point.strip("/") else _mounted_probe,
        )

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        # Here, not as the field's check: a bad url is reported beside the other problems.
        reason = url_problem(self.url)
        if reason:
            problems.append(("url", reason))
        method = self.auth_method
        # One method logs in (auth_method, "token" by default); a table for another would be
        # ignored, and the login would fail for a reason that hides the typo.
        for other in AUTH_METHODS:
            if other != method and getattr(self, other) is not None:
                problems.append(
                    (
                        other,
                        f'[backends.{other}] is for auth_method = "{other}", but this backend\'s '
                        f'auth_method is "{method}": set auth_method = "{other}" or drop the table',
                    )
                )
        if method in ("approle", "jwt", "userpass", "ldap") and getattr(self, method) is None:
            problems.append((method, f'auth_method = "{method}" needs a [backends.{method}] table'))
        if method == "kubernetes" and self.kubernetes is None:
            problems.append(("kubernetes", "needs a [backends.kubernetes] table with a role"))
        if self.token and self.token.token and self.token.token_file:
            problems.append(("token", "set token or token_file, not both"))
        if self.approle and bool(self.approle.secret_id) == bool(self.approle.secret_id_file):
            problems.append(("approle", "set exactly one of secret_id and secret_id_file"))
        for name in ("userpass", "ldap"):
            table = getattr(self, name)
            if table is not None and bool(table.password) == bool(table.password_file):
                problems.append((name, "set exactly one of password and password_file"))
        if bool(self.client_cert) != bool(self.client_key):
            problems.append(("client_cert", "client_cert and client_key go together"))
        if method == "cert" and not (self.client_cert and self.url.startswith("https://")):
            problems.append(
                ("auth_method", "cert logs in with client_cert and client_key over https://")
            )
        if self.backoff_initial > self.backoff_max:
            problems.append(("backoff_initial", "must not exceed backoff_max"))
        if self.feed is not None and self.kv_engine_version != 2:
            problems.append(("feed", "needs KV version 2 (KV v1 keeps no versions to compare)"))
        if self.feed is not None and self.feed.method == "scan" and not self.mount_point:
            problems.append(("feed", 'method = "scan" needs a mount_point'))
        return problems
