"""AWS credentials from the default chain, blocking (botocore), for what signs its own requests.

The AWS backends use aiobotocore's chain; Vault's aws_iam login and the fleet store's IAM auth
tokens sign a request themselves, off the event loop, with the same keys meaning the same:
``profile``, ``credentials_file``, ``region``, ``role_arn``, ``role_session_name``,
``sts_endpoint_url``. The chain is read anew at every call: rotated keys in a credentials file
are used at once, and an assumed role is asked again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

DEFAULT_REGION = "us-east-1"  # hvac's and boto's examples', when nothing names one


class ChainSettings(Protocol):
    @property
    def profile(self) -> str: ...
    @property
    def credentials_file(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def role_arn(self) -> str: ...
    @property
    def role_session_name(self) -> str: ...
    @property
    def sts_endpoint_url(self) -> str: ...


class NoCredentials(Exception):
    """Nothing in the chain (environment, profile, web identity, container, instance role), or
    a ``credentials_file`` that cannot be read."""


@dataclass(frozen=True)
class AwsKeys:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    region: str  # the settings' region, else the chain's, else DEFAULT_REGION


def aws_keys(settings: ChainSettings) -> AwsKeys:
    """The chain's credentials now (after AssumeRole when ``role_arn`` is set); botocore's
    exceptions for a broken profile or a refused AssumeRole, ``NoCredentials`` for none."""
    import botocore.session

    if settings.credentials_file:
        # Checked at every call: botocore skips a file it cannot read and signs with whatever
        # else the chain finds, another identity.
        try:
            Path(settings.credentials_file).read_bytes()
        except OSError as exc:
            raise NoCredentials(
                f"cannot read the credentials file {settings.credentials_file}: {exc.strerror}"
            ) from None
    session = botocore.session.Session(profile=settings.profile or None)
    if settings.credentials_file:  # before anything reads the profile map (built once)
        session.set_config_variable("credentials_file", settings.credentials_file)
    if settings.region:
        session.set_config_variable("region", settings.region)
    region = session.get_config_variable("region") or DEFAULT_REGION
    credentials = session.get_credentials()
    if credentials is None:
        raise NoCredentials(
            "no AWS credentials (environment, profile, credentials file, web identity, "
            "container or instance role)"
        )
    if settings.role_arn:
        # Fetched here, not wrapped in botocore's refreshing credentials: each call asks
        # anew, and a refusal is one line of the caller's, not botocore's warning with a
        # traceback.
        assumed = _assume_role(session, credentials, settings, region)
        return AwsKeys(assumed["access_key"], assumed["secret_key"], assumed["token"], region)
    frozen = credentials.get_frozen_credentials()
    return AwsKeys(frozen.access_key, frozen.secret_key, frozen.token or None, region)


def _assume_role(session: Any, source: Any, settings: ChainSettings, region: str) -> dict[str, Any]:
    from botocore.credentials import AssumeRoleCredentialFetcher

    fetcher = AssumeRoleCredentialFetcher(
        functools.partial(
            session.create_client,
            endpoint_url=settings.sts_endpoint_url or None,
            region_name=region,
        ),
        source,
        settings.role_arn,
        extra_args={"RoleSessionName": settings.role_session_name},
    )
    fetched: dict[str, Any] = fetcher.fetch_credentials()
    return fetched
