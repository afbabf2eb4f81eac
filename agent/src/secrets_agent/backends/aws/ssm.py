"""``type = "aws_ssm"``: Parameter Store, SecureString decrypted, named as the provider does."""

from __future__ import annotations

from secrets_agent.backends.aws.base import AwsBackend
from secrets_agent.backends.aws.options import SsmOptions
from secrets_agent.backends.base import Versioned


class SsmBackend(AwsBackend):
    type_name = "aws_ssm"
    Options = SsmOptions
    options: SsmOptions
    service = "ssm"

    async def fetch_name(self, name: str) -> Versioned | None:
        response = await self.client.api("GetParameter", Name=name, WithDecryption=True)
        if response is None:
            return None
        # No version: Parameter Store has no call cheaper than GetParameter to revalidate with.
        return Versioned(response["Parameter"]["Value"])

    async def fetch_batch(self, names: list[str]) -> dict[str, Versioned]:
        response = await self.client.api("GetParameters", Names=names, WithDecryption=True)
        return {p["Name"]: Versioned(p["Value"]) for p in (response or {}).get("Parameters", [])}
