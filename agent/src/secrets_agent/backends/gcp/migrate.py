"""The google provider's ``CloudSecretManagerBackend`` kwargs as a ``gcp_secret_manager`` table."""

from __future__ import annotations

import json
import os

from secrets_agent.backends.migration import (
    CREDENTIALS_DIR,
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
    if (sep := kwargs.separator()) is not None:
        t.options["sep"] = sep
    if kwargs.has("project_id"):
        t.options["project_id"] = kwargs.text("project_id")
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
        t.todo.append(
            (
                "gcp_credential_config_file",
                f"set GOOGLE_APPLICATION_CREDENTIALS={_credential_config(config_file, t)} in the "
                "agent's environment (ADC)",
            )
        )
    chain = kwargs.take("impersonation_chain", None)
    if chain:
        chain = [chain] if isinstance(chain, str) else chain
        if not isinstance(chain, list) or not all(isinstance(c, str) for c in chain):
            raise MigrationError("impersonation_chain: expected an account or a list of accounts")
        t.options["impersonation_chain"] = chain
    if kwargs.has("gcp_scopes"):
        kwargs.take("gcp_scopes")
        t.todo.append(("gcp_scopes", "the agent asks for cloud-platform: dropped"))
    leftovers(kwargs, t, "no equivalent in the agent: review")
    return t


def _credential_config(config_file: object, t: Translation) -> str:
    """Where the agent finds the provider's credential configuration (a file's path).

    The provider takes a map, a path, or the file's JSON text (whatever is not a path): the
    map and the text are written to a 0600 file, never printed; a path must be absolute.
    """
    if isinstance(config_file, str):
        text = config_file
        try:
            config_file = json.loads(text)
        except ValueError:
            if not os.path.isabs(text):
                raise MigrationError(
                    "gcp_credential_config_file: neither an absolute file path nor JSON"
                ) from None
            return text
    if not isinstance(config_file, dict):
        raise MigrationError("gcp_credential_config_file: expected a file path or a JSON object")
    t.credentials[("@gcp-credential-config",)] = Credential(
        "gcp-credential-config.json", json.dumps(config_file)
    )
    return f"{CREDENTIALS_DIR}/gcp-credential-config.json"
