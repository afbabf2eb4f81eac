"""The hashicorp provider's ``VaultBackend`` kwargs as a ``type = "vault"`` table."""

from __future__ import annotations

from secrets_agent.backends.migration import (
    Credential,
    Kwargs,
    MigrationError,
    Translation,
    leftovers,
    take_prefixes,
)
from secrets_agent.kinds import Kind

PATHS = {Kind.CONNECTION: "connections", Kind.VARIABLE: "variables", Kind.CONFIG: "config"}
METHODS = ("token", "approle", "kubernetes", "userpass", "ldap", "jwt", "aws_iam")
AWS_PROFILE = "airflow-secrets-agent"  # the credentials file's section for inline keys
# The provider passes assume_role_kwargs to STS AssumeRole; the agent sets these two.
ASSUME_ROLE = {"RoleArn": "role_arn", "RoleSessionName": "role_session_name"}
# Options (dotted: in a method's table) whose kwarg has another name.
ORIGINS = {
    "auth_method": "auth_type",
    "client_cert": "cert",
    "client_key": "cert",
    "ca_file": "verify",
    "token.token_file": "token_path",
    "kubernetes.role": "kubernetes_role",
    "kubernetes.token_path": "kubernetes_jwt_path",
    "jwt.role": "jwt_role",
    "jwt.jwt_file": "jwt_token_path",
    "aws_iam.role": "role_id",
    **{f"{method}.mount_point": "auth_mount_point" for method in METHODS},
    **{f"aws_iam.{ours}": "assume_role_kwargs" for ours in ASSUME_ROLE.values()},
}


def translate(kwargs: Kwargs) -> Translation:
    t = Translation("vault", origins=dict(ORIGINS))
    url = kwargs.text("url")
    if not url:
        raise MigrationError("url: VaultBackend needs the Vault address")
    t.options["url"] = url
    # None: the mount is the id's first segment. Not str(): a map's Python text is no mount.
    has_mount = kwargs.has("mount_point")
    t.options["mount_point"] = kwargs.text("mount_point", "") if has_mount else "secret"
    take_prefixes(kwargs, t, "{}_path", PATHS, lists=True)
    if kwargs.take("global_secrets_path", None) is not None:
        # The provider appends it to every kind's paths: a fallback path, as a list would be.
        raise MigrationError(
            "global_secrets_path: a fallback path has no single equivalent; use one "
            "[[backends]] table per path, in the same order (the global one last)"
        )
    # Team paths are read when this is true and [core] multi_team is on (the command's part).
    if kwargs.has("use_team_secrets_path"):
        try:
            t.team_paths = kwargs.truth("use_team_secrets_path", True)
        except MigrationError as exc:
            t.team_paths_unclear = str(exc)
    t.options["kv_engine_version"] = kwargs.number("kv_engine_version", 2)
    if kwargs.has("namespace"):
        t.options["namespace"] = kwargs.text("namespace")
    method = kwargs.text("auth_type", "token")
    if method not in METHODS:
        raise MigrationError(
            f"auth_type {method!r}: the agent logs in with {', '.join(METHODS)}; "
            "move to one of them first"
        )
    t.options["auth_method"] = method
    auth_mount = kwargs.text("auth_mount_point")
    if method == "token":
        _token(kwargs, t)
    elif method == "approle":
        role_id = kwargs.text("role_id")
        secret_id = kwargs.text("secret_id")
        if not role_id or not secret_id:
            raise MigrationError("auth_type approle: role_id and secret_id are both needed")
        t.options["approle"] = {"role_id": role_id} | (
            {"mount_point": auth_mount} if auth_mount else {}
        )
        t.credentials[("approle", "secret_id_file")] = Credential(
            "vault-approle-secret-id", secret_id
        )
    elif method in ("userpass", "ldap"):
        _password(kwargs, t, method, auth_mount)
    elif method == "jwt":
        _jwt(kwargs, t, auth_mount)
    elif method == "aws_iam":
        _aws_iam(kwargs, t, auth_mount)
    else:
        role = kwargs.text("kubernetes_role")
        if not role:
            raise MigrationError("auth_type kubernetes: kubernetes_role is needed")
        table = {"role": role}
        if kwargs.has("kubernetes_jwt_path"):
            table["token_path"] = kwargs.text("kubernetes_jwt_path")
        if auth_mount:
            table["mount_point"] = auth_mount
        t.options["kubernetes"] = table
    if method == "token" and auth_mount:
        t.todo.append(("auth_mount_point", "not used by token auth: dropped"))
    if kwargs.has("timeout"):  # passed to hvac.Client by the provider, as the agent does
        timeout = kwargs.text("timeout")
        try:
            t.options["timeout"] = float(timeout)
        except ValueError:
            raise MigrationError("timeout: expected a number of seconds") from None
    cert = kwargs.take("cert", None)  # requests' client certificate, as the provider sets it
    if isinstance(cert, str) and cert:  # one PEM file with the certificate and its key
        t.options["client_cert"] = t.options["client_key"] = cert
    elif (
        isinstance(cert, list | tuple) and len(cert) == 2 and all(isinstance(c, str) for c in cert)
    ):
        t.options["client_cert"], t.options["client_key"] = cert
    elif cert is not None:
        raise MigrationError("cert: expected a PEM file path or [certificate, key] paths")
    verify = kwargs.take("verify", True)
    if isinstance(verify, str) and verify.strip().lower() not in ("true", "false"):
        t.options["ca_file"] = verify  # a CA bundle path, as requests reads it
    elif verify is not True and str(verify).strip().lower() != "true":
        t.options["verify"] = False
        t.todo.append(("verify", "TLS verification is off, as it was: turn it on (ca_file)"))
    leftovers(kwargs, t, "no equivalent in the agent (the provider passes it to hvac): review")
    return t


def _token(kwargs: Kwargs, t: Translation) -> None:
    token, token_path = kwargs.text("token"), kwargs.text("token_path")
    if token and token_path:
        raise MigrationError("token and token_path are both set: keep one")
    if token:
        t.credentials[("token", "token_file")] = Credential("vault-token", token)
    elif token_path:
        t.options["token"] = {"token_file": token_path}
    else:
        t.todo.append(("token", "none in the kwargs: the agent reads $VAULT_TOKEN, as hvac does"))


def _password(kwargs: Kwargs, t: Translation, method: str, auth_mount: str) -> None:
    """userpass / ldap: the password goes to a credential file, the mount as the provider's."""
    username, password = kwargs.text("username"), kwargs.text("password")
    if not username or not password:
        raise MigrationError(f"auth_type {method}: username and password are both needed")
    t.options[method] = {"username": username} | ({"mount_point": auth_mount} if auth_mount else {})
    t.credentials[(method, "password_file")] = Credential(f"vault-{method}-password", password)


def _jwt(kwargs: Kwargs, t: Translation, auth_mount: str) -> None:
    role, token, token_path = (kwargs.text(k) for k in ("jwt_role", "jwt_token", "jwt_token_path"))
    if not role or not (token or token_path):
        raise MigrationError("auth_type jwt: jwt_role and one of jwt_token / jwt_token_path")
    table = {"role": role} | ({"mount_point": auth_mount} if auth_mount else {})
    if token:  # the provider prefers the inline token when both are set
        t.credentials[("jwt", "jwt_file")] = Credential("vault-jwt", token.strip())
    else:
        table["jwt_file"] = token_path
    t.options["jwt"] = table


def _aws_iam(kwargs: Kwargs, t: Translation, auth_mount: str) -> None:
    """Inline keys go to a 0600 credentials file; without them, AWS's default chain, as in
    the provider (which then reads ``boto3.Session()``'s credentials)."""
    table: dict[str, str] = {"mount_point": auth_mount} if auth_mount else {}
    if role := kwargs.text("role_id"):
        table["role"] = role
    if region := kwargs.text("region"):
        table["region"] = region
    key_id, secret = kwargs.text("key_id"), kwargs.text("secret_id")
    if bool(key_id) != bool(secret):
        raise MigrationError("auth_type aws_iam: key_id and secret_id go together")
    assume = kwargs.take("assume_role_kwargs", None)
    if key_id:
        lines = [f"[{AWS_PROFILE}]", f"aws_access_key_id = {key_id}"]
        lines += [f"aws_secret_access_key = {secret}", ""]
        t.credentials[("aws_iam", "credentials_file")] = Credential(
            "vault-aws-credentials", "\n".join(lines)
        )
        table["profile"] = AWS_PROFILE
        # The provider signs with these keys for hvac's default region, whatever the node's
        # environment says (without keys it takes the chain's region, as the agent does).
        table.setdefault("region", "us-east-1")
        if assume:  # the provider ignores them when keys are given
            t.todo.append(("assume_role_kwargs", "ignored by the provider with key_id: dropped"))
    elif assume:
        if not isinstance(assume, dict) or not isinstance(assume.get("RoleArn"), str):
            raise MigrationError("assume_role_kwargs: expected a map with a RoleArn")
        unknown = sorted(set(assume) - set(ASSUME_ROLE))
        if unknown:
            raise MigrationError(
                f"assume_role_kwargs: the agent's AssumeRole takes RoleArn and RoleSessionName, "
                f"not {unknown}"
            )
        if not isinstance(assume.get("RoleSessionName", ""), str):  # str() wrote null as "None"
            raise MigrationError("assume_role_kwargs: RoleSessionName must be a string")
        table |= {ASSUME_ROLE[k]: v for k, v in assume.items()}
    t.options["aws_iam"] = table
