"""The microsoft-azure provider's ``AzureKeyVaultBackend`` kwargs as an ``azure_key_vault``
table."""

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

DEFAULTS = {kind: f"airflow-{kind.plural}" for kind in Kind}
KEPT = ("managed_identity_client_id", "workload_identity_tenant_id", "api_version")


def translate(kwargs: Kwargs) -> Translation:
    t = Translation("azure_key_vault", origins={"ca_file": "connection_verify"})
    vault_url = kwargs.text("vault_url")
    if not vault_url:
        raise MigrationError("vault_url: AzureKeyVaultBackend needs the vault's URL")
    t.options["vault_url"] = vault_url
    take_prefixes(kwargs, t, "{}_prefix", DEFAULTS)
    if (sep := kwargs.separator()) is not None:
        t.options["sep"] = sep
    for key in KEPT:
        if kwargs.has(key):
            t.options[key] = kwargs.text(key)
    principal = {key: kwargs.text(key) for key in ("tenant_id", "client_id", "client_secret")}
    if all(principal.values()):
        t.options["tenant_id"], t.options["client_id"] = (
            principal["tenant_id"],
            principal["client_id"],
        )
        t.credentials[("client_secret_file",)] = Credential(
            "azure-client-secret", principal["client_secret"]
        )
    elif any(principal.values()):
        # The provider uses a service principal only with all three; else DefaultAzureCredential.
        given = [key for key, value in principal.items() if value]
        for key in given:
            t.todo.append(
                (key, "ignored by the provider without the other two (DefaultAzureCredential)")
            )
    if kwargs.has("verify_challenge_resource"):  # SecretClient's, and the agent's, option
        t.options["verify_challenge_resource"] = kwargs.flag("verify_challenge_resource", True)
    if kwargs.has("connection_verify"):
        verify = kwargs.take("connection_verify")
        if isinstance(verify, str) and verify.lower() not in ("true", "false"):
            t.options["ca_file"] = verify
        elif verify is not True:  # true is the SDK's default and the agent's: nothing to carry
            raise MigrationError("connection_verify: only a CA bundle path has an equivalent")
    leftovers(kwargs, t, "no equivalent in the agent (the provider passes it to SecretClient)")
    return t
