"""Vault auth methods: one small class each, all with ``login(client) -> Lease``.

They run in the backend's thread pool (hvac is synchronous) and read credential files on every
login, so rotated files are picked up without a restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from secrets_agent.backends.aws_chain import NoCredentials, aws_keys
from secrets_agent.backends.files import read_local
from secrets_agent.backends.vault.errors import CredentialSourceError
from secrets_agent.backends.vault.options import (
    AppRoleAuth,
    AwsIamAuth,
    CertAuth,
    JwtAuth,
    KubernetesAuth,
    LdapAuth,
    TokenAuth,
    UserpassAuth,
    VaultOptions,
)


@dataclass(frozen=True)
class Lease:
    token: str = field(repr=False)
    ttl: float  # seconds; 0 means the token never expires
    renewable: bool


class AuthMethod(Protocol):
    name: str

    def login(self, client: Any) -> Lease: ...


def _auth_lease(response: Any) -> Lease:
    auth = response["auth"]
    return Lease(auth["client_token"], float(auth["lease_duration"]), bool(auth["renewable"]))


def _read_secret_file(backend: str, path: str, what: str) -> str:
    try:
        value = read_local(backend, path, what, CredentialSourceError).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialSourceError(backend, f"the {what} file {path} is not UTF-8 text") from None
    if not value:
        raise CredentialSourceError(backend, f"the {what} file {path} is empty")
    return value


class TokenLogin:
    name = "token"

    def __init__(self, backend: str, options: TokenAuth) -> None:
        self.backend, self.options = backend, options

    def login(self, client: Any) -> Lease:
        token = self._token()
        client.token = token
        data = client.auth.token.lookup_self()["data"]
        return Lease(token, float(data.get("ttl") or 0), bool(data.get("renewable")))

    def _token(self) -> str:
        if self.options.token:
            return self.options.token
        if self.options.token_file:
            return _read_secret_file(self.backend, self.options.token_file, "token")
        token = os.environ.get("VAULT_TOKEN", "")
        if not token:
            raise CredentialSourceError(
                self.backend, "no token: set token, token_file or $VAULT_TOKEN"
            )
        return token


class AppRoleLogin:
    name = "approle"

    def __init__(self, backend: str, options: AppRoleAuth) -> None:
        self.backend, self.options = backend, options

    def login(self, client: Any) -> Lease:
        secret_id = self.options.secret_id or _read_secret_file(
            self.backend, self.options.secret_id_file, "secret_id"
        )
        response = client.auth.approle.login(
            role_id=self.options.role_id,
            secret_id=secret_id,
            mount_point=self.options.mount_point,
            use_token=False,
        )
        return _auth_lease(response)


class JwtLogin:
    name = "jwt"

    def __init__(self, backend: str, options: JwtAuth) -> None:
        self.backend, self.options = backend, options

    def login(self, client: Any) -> Lease:
        jwt = _read_secret_file(self.backend, self.options.jwt_file, "JWT")
        response = client.auth.jwt.jwt_login(
            role=self.options.role, jwt=jwt, path=self.options.mount_point, use_token=False
        )
        return _auth_lease(response)


class KubernetesLogin:
    name = "kubernetes"

    def __init__(self, backend: str, options: KubernetesAuth) -> None:
        self.backend, self.options = backend, options

    def login(self, client: Any) -> Lease:
        jwt = _read_secret_file(self.backend, self.options.token_path, "service account token")
        response = client.auth.kubernetes.login(
            role=self.options.role, jwt=jwt, mount_point=self.options.mount_point, use_token=False
        )
        return _auth_lease(response)


class _PasswordLogin:
    """userpass and ldap: the same login call (``POST auth/<mount>/login/<username>``)."""

    name: str

    def __init__(self, backend: str, options: UserpassAuth | LdapAuth) -> None:
        self.backend, self.options = backend, options

    def login(self, client: Any) -> Lease:
        password = self.options.password or _read_secret_file(
            self.backend, self.options.password_file, "password"
        )
        response = getattr(client.auth, self.name).login(
            username=self.options.username,
            password=password,
            mount_point=self.options.mount_point,
            use_token=False,
        )
        return _auth_lease(response)


class AwsIamLogin:
    """A ``GetCallerIdentity`` request signed with AWS credentials; Vault sends it to STS."""

    name = "aws_iam"

    def __init__(self, backend: str, options: AwsIamAuth) -> None:
        self.backend, self.options = backend, options

    def login(self, client: Any) -> Lease:
        try:  # read anew at every login, as the other methods' credential files
            keys = aws_keys(self.options)
        except NoCredentials as exc:  # a start fails on it, as on a missing token file
            raise CredentialSourceError(self.backend, f"aws_iam login: {exc}") from None
        o = self.options
        response = client.auth.aws.iam_login(
            keys.access_key,
            keys.secret_key,
            keys.session_token,
            header_value=o.header_value or None,
            role=o.role or None,
            use_token=False,
            region=keys.region,
            mount_point=o.mount_point,
        )
        return _auth_lease(response)


class CertLogin:
    """The TLS client certificate the session presents (``client_cert``) is the credential."""

    name = "cert"

    def __init__(self, backend: str, options: CertAuth) -> None:
        self.backend, self.options = backend, options

    def login(self, client: Any) -> Lease:
        from hvac import utils

        path = utils.format_url(
            "/v1/auth/{mount_point}/login", mount_point=self.options.mount_point
        )
        body = {"name": self.options.name} if self.options.name else {}
        return _auth_lease(client.adapter.login(path, use_token=False, json=body))


class UserpassLogin(_PasswordLogin):
    name = "userpass"


class LdapLogin(_PasswordLogin):
    name = "ldap"


_METHODS: dict[str, Callable[[str, VaultOptions], AuthMethod]] = {
    "token": lambda name, o: TokenLogin(name, o.token or TokenAuth()),
    "approle": lambda name, o: AppRoleLogin(name, o.approle),  # type: ignore[arg-type]
    "jwt": lambda name, o: JwtLogin(name, o.jwt),  # type: ignore[arg-type]
    "kubernetes": lambda name, o: KubernetesLogin(name, o.kubernetes),  # type: ignore[arg-type]
    "userpass": lambda name, o: UserpassLogin(name, o.userpass),  # type: ignore[arg-type]
    "ldap": lambda name, o: LdapLogin(name, o.ldap),  # type: ignore[arg-type]
    "aws_iam": lambda name, o: AwsIamLogin(name, o.aws_iam or AwsIamAuth()),
    "cert": lambda name, o: CertLogin(name, o.cert or CertAuth()),
}


def auth_method(backend: str, options: VaultOptions) -> AuthMethod:
    """The configured method; ``VaultOptions.validate`` guarantees its table is present."""
    return _METHODS[options.auth_method](backend, options)


def check_local_files(backend: str, options: VaultOptions) -> None:
    """Read the credential and TLS files a start would read (the pod-mounted Kubernetes token
    is left out: it exists only inside the pod)."""
    files = [
        ("token", options.token.token_file if options.token else ""),
        ("secret_id", options.approle.secret_id_file if options.approle else ""),
        ("JWT", options.jwt.jwt_file if options.jwt and options.auth_method == "jwt" else ""),
        ("password", options.userpass.password_file if options.userpass else ""),
        ("password", options.ldap.password_file if options.ldap else ""),
    ]
    for what, path in files:
        if path:
            _read_secret_file(backend, path, what)
    for what, path in (
        ("CA", options.ca_file),
        ("client certificate", options.client_cert),
        ("client key", options.client_key),
        ("credentials", options.aws_iam.credentials_file if options.aws_iam else ""),
    ):
        if path:
            read_local(backend, path, what, CredentialSourceError)
