"""The google provider's ``CloudSecretManagerBackend`` kwargs as a ``gcp_secret_manager`` table."""

from __future__ import annotations

import json

from secrets_agent.backends.migration import (
    Credential,
    Kwargs,
    MigrationError,
    Translation,
    leftovers,
    take_prefixes,
)
from secrets_agent.kinds import Kind

DEFAULTS = {kind: f"airflow-{kind.plural}" for kind in Kind}


def translate(kwargs: Kwargs) -> Translation:
    t = Translation("gcp_secret_manager", origins={"credentials_file": "gcp_key_path"})
    take_prefixes(kwargs, t, "{}_prefix", DEFAULTS)
    for key in ("sep", "project_id"):
        if kwargs.has(key):
            t.options[key] = kwargs.text(key)
    path = kwargs.text("gcp_key_path")
    keyfile = kwargs.take("gcp_keyfile_dict", None)
    if path and keyfile:
        raise MigrationError("gcp_key_path and gcp_keyfile_dict are both set: keep one")
    if path:
        t.options["credentials_file"] = path
    elif keyfile:
        if isinstance(keyfile, str):
            try:
                keyfile = json.loads(keyfile)
            except ValueError:
                raise MigrationError("gcp_keyfile_dict: not a JSON object") from None
        if not isinstance(keyfile, dict):
            raise MigrationError("gcp_keyfile_dict: not a JSON object")
        t.credentials[("credentials_file",)] = Credential("gcp-key.json", json.dumps(keyfile))
    config_file = kwargs.take("gcp_credential_config_file", None)
    if config_file:
        if isinstance(config_file, dict):
            t.credentials[("@gcp-credential-config",)] = Credential(
                "gcp-credential-config.json", json.dumps(config_file)
            )
            where = "credentials/gcp-credential-config.json"
        else:
            where = str(config_file)
        t.todo.append(
            (
                "gcp_credential_config_file",
                f"set GOOGLE_APPLICATION_CREDENTIALS={where} in the agent's environment (ADC)",
            )
        )
    chain = kwargs.take("impersonation_chain", None)
    if chain:
        t.options["impersonation_chain"] = [chain] if isinstance(chain, str) else list(chain)
    if kwargs.has("gcp_scopes"):
        kwargs.take("gcp_scopes")
        t.todo.append(("gcp_scopes", "the agent asks for cloud-platform: dropped"))
    leftovers(kwargs, t, "no equivalent in the agent: review")
    return t
