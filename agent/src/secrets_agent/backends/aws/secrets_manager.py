"""``type = "aws_secrets_manager"``: naming and JSON connections as Airflow's provider does it."""

from __future__ import annotations

import json
import logging
from typing import Any

from secrets_agent.backends.aws.base import AwsBackend
from secrets_agent.backends.aws.options import SecretsManagerOptions
from secrets_agent.backends.base import Versioned
from secrets_agent.errors import BackendError, TransientError
from secrets_agent.kinds import Kind

log = logging.getLogger(__name__)

# The provider's names for each connection field in a JSON secret, first match wins.
_FIELD_WORDS = {
    "login": ("login", "user", "username", "user_name"),
    "password": ("password", "pass", "key"),
    "host": ("host", "remote_host", "server"),
    "port": ("port",),
    "schema": ("database", "schema"),
    "conn_type": ("conn_type", "conn_id", "connection_type", "engine"),
    "extra": ("extra",),
}
_ALIASES = {"user": "login", "pass": "password"}


class SecretsManagerBackend(AwsBackend):
    type_name = "aws_secrets_manager"
    Options = SecretsManagerOptions
    options: SecretsManagerOptions
    service = "secretsmanager"
    _describe_refused = False  # DescribeSecret failed other than transiently: not asked again

    async def fetch_name(self, name: str) -> Versioned | None:
        response = await self.client.api("GetSecretValue", SecretId=name)
        if response is None:
            return None
        if "SecretString" not in response:
            log.warning(
                "backend %r: %s is binary; only text secrets are supported", self.name, name
            )
            return None
        return Versioned(response["SecretString"], response.get("VersionId"))

    async def revalidate(self, kind: Kind, secret_id: str, version: str) -> bool:
        """DescribeSecret, then a refetch only if AWSCURRENT moved: billed as one call like
        GetSecretValue, but no value crosses the wire and no KMS key decrypts it."""
        name = self.options.name_for(kind, secret_id)
        if not self.options.revalidate or self._describe_refused or name is None:
            return False
        try:
            response = await self.client.api("DescribeSecret", SecretId=name)
        except TransientError:
            raise  # stale-on-error, as for the fetch
        except BackendError as exc:
            # Revalidation only spares a fetch: a policy granting GetSecretValue alone (all
            # the provider needs) must not turn every expired value into a 403. The fetch
            # that follows decides; DescribeSecret is not asked again.
            self._describe_refused = True
            log.warning(
                "backend %r: %s; values are fetched again at each TTL instead "
                "(grant secretsmanager:DescribeSecret to revalidate them)",
                self.name,
                exc.reason,
            )
            return False
        if response is None or "DeletedDate" in response:
            return False  # pending deletion: the fetch that follows reads it as a miss
        stages: dict[str, list[str]] = response.get("VersionIdsToStages", {})
        return any(v == version and "AWSCURRENT" in s for v, s in stages.items())

    async def fetch_batch(self, names: list[str]) -> dict[str, Versioned]:
        response = await self.client.api("BatchGetSecretValue", SecretIdList=names)
        values = {}
        for item in (response or {}).get("SecretValues", []):
            if "SecretString" in item:
                values[item["Name"]] = Versioned(item["SecretString"], item.get("VersionId"))
        return values

    def shape(self, kind: Kind, found: Versioned) -> Versioned:
        if kind is not Kind.CONNECTION or not found.value.strip().startswith("{"):
            return found
        try:
            secret = json.loads(found.value)
        except json.JSONDecodeError:
            return found  # Airflow will report it; the text must not reach our logs
        if not isinstance(secret, dict):
            return found
        return Versioned(json.dumps(self._standardise(secret)), found.version)

    def _standardise(self, secret: dict[str, Any]) -> dict[str, Any]:
        """The provider's alias handling, so existing secrets keep working unchanged."""
        words = {conn_field: list(names) for conn_field, names in _FIELD_WORDS.items()}
        for conn_field, extra in self.options.extra_conn_words.items():
            words[_ALIASES.get(conn_field, conn_field)].extend(extra)
        fields = {}
        for conn_field, names in words.items():
            value = next((v for k, v in secret.items() if k in names), None)
            if value is not None:
                fields[conn_field] = value
        return fields
