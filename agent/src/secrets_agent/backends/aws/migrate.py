"""The amazon provider's ``SecretsManagerBackend`` / ``SystemsManagerParameterStoreBackend``
kwargs as ``aws_secrets_manager`` / ``aws_ssm`` tables."""

from __future__ import annotations

from secrets_agent.backends.aws.options import CONN_FIELDS
from secrets_agent.backends.migration import (
    Credential,
    Kwargs,
    MigrationError,
    Translation,
    leftovers,
    take_prefixes,
)
from secrets_agent.kinds import Kind

PATTERNS = ("connections_lookup_pattern", "variables_lookup_pattern", "config_lookup_pattern")
RENAMED = {"region_name": "region", "profile_name": "profile"}
KEPT = ("endpoint_url", "role_arn")
KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
PROFILE = "airflow-secrets-agent"
# The provider's AssumeRole call: RoleSessionName from assume_role_kwargs (the agent's
# role_session_name), RoleArn always role_arn's (the kwargs' is overridden); any other
# argument the agent cannot send.
ASSUME_ROLE_KEYS = ("RoleSessionName", "RoleArn")


def translate_secrets_manager(kwargs: Kwargs) -> Translation:
    t = _common(kwargs, "aws_secrets_manager", "airflow/{}")
    if (sep := kwargs.separator()) is not None:
        t.options["sep"] = sep
    words = kwargs.take("extra_conn_words", None)
    if words:
        if not isinstance(words, dict) or not all(isinstance(v, list) for v in words.values()):
            raise MigrationError("extra_conn_words: expected a map of field to a list of words")
        unknown = sorted(set(words) - set(CONN_FIELDS) - {"user", "pass"})
        if unknown:
            raise MigrationError(f"extra_conn_words: unknown connection fields {unknown}")
        t.options["extra_conn_words"] = {k: [str(w) for w in v] for k, v in words.items()}
    if kwargs.has("are_secret_values_urlencoded"):
        kwargs.take("are_secret_values_urlencoded")
        t.todo.append(
            ("are_secret_values_urlencoded", "ignored since amazon 9.0.0, by the agent too")
        )
    return _rest(kwargs, t)


def translate_ssm(kwargs: Kwargs) -> Translation:
    t = _common(kwargs, "aws_ssm", "/airflow/{}")
    if kwargs.has("sep"):
        # Not a SystemsManagerParameterStoreBackend option: it lands in the boto3 connection's
        # extra, and names are always joined with "/". The agent's aws_ssm sep would be read.
        kwargs.take("sep")
        t.todo.append(("sep", "ignored by the provider (names are joined with /): dropped"))
    return _rest(kwargs, t)


def _common(kwargs: Kwargs, type_name: str, default: str) -> Translation:
    origins = {ours: theirs for theirs, ours in RENAMED.items()}
    t = Translation(type_name, origins=origins | {"role_session_name": "assume_role_kwargs"})
    defaults = {kind: default.format(kind.plural) for kind in Kind}
    take_prefixes(kwargs, t, "{}_prefix", defaults)
    for theirs, ours in RENAMED.items():
        if kwargs.has(theirs):
            t.options[ours] = kwargs.text(theirs)
    for key in (*KEPT, *PATTERNS):
        if kwargs.has(key):
            t.options[key] = kwargs.text(key)
    if kwargs.has("full_url_mode"):
        kwargs.take("full_url_mode")
        t.todo.append(("full_url_mode", "not needed: URI or JSON is told apart per value"))
    _assume_role(kwargs, t)
    if kwargs.take("session_kwargs", None):
        # The provider's deprecated place for keys and a profile: another identity than the
        # agent's default chain, so not left to a review.
        raise MigrationError(
            "session_kwargs: give its aws_access_key_id / aws_secret_access_key / "
            "aws_session_token or profile_name as backend kwargs of their own"
        )
    # null or "" is no key, as the provider reads them (then the default chain or the profile).
    keys = {key: value for key in KEYS if (value := kwargs.text(key))}
    if keys:
        if "profile" in t.options:
            raise MigrationError("access keys and profile_name are both set: keep one")
        if not (keys.get("aws_access_key_id") and keys.get("aws_secret_access_key")):
            raise MigrationError("aws_access_key_id and aws_secret_access_key go together")
        lines = [f"[{PROFILE}]", *(f"{k} = {v}" for k, v in keys.items()), ""]
        t.credentials[("credentials_file",)] = Credential("aws-credentials", "\n".join(lines))
        t.options["profile"] = PROFILE
    return t


def _assume_role(kwargs: Kwargs, t: Translation) -> None:
    """role_arn's AssumeRole as the provider calls it; another method or argument stops."""
    method = kwargs.take("assume_role_method", None)
    assume = kwargs.take("assume_role_kwargs", None)
    if not t.options.get("role_arn"):
        for key, value in (("assume_role_method", method), ("assume_role_kwargs", assume)):
            if value is not None:
                t.todo.append((key, "ignored by the provider without role_arn: dropped"))
        return
    if method not in (None, "assume_role"):
        raise MigrationError(
            f"assume_role_method {method!r}: the agent assumes role_arn with AssumeRole only"
        )
    if assume is None:
        return
    if not isinstance(assume, dict):
        raise MigrationError("assume_role_kwargs: expected a map of AssumeRole arguments")
    unknown = sorted(set(assume) - set(ASSUME_ROLE_KEYS))
    if unknown:
        raise MigrationError(
            f"assume_role_kwargs: the agent's AssumeRole takes RoleSessionName, not {unknown}"
        )
    if "RoleSessionName" in assume:
        name = assume["RoleSessionName"]
        if not isinstance(name, str):  # str() wrote null as "None"; STS refuses it anyway
            raise MigrationError("assume_role_kwargs: RoleSessionName must be a string")
        t.options["role_session_name"] = name


def _rest(kwargs: Kwargs, t: Translation) -> Translation:
    leftovers(kwargs, t, "no equivalent in the agent (the provider passes it to boto3): review")
    return t
