"""AWS credentials for Vault's aws (iam) login, found as the AWS backends find theirs.

Blocking (botocore, not aiobotocore): the login runs on the backend's worker threads, as every
hvac call does. The chain is read again at every login, so rotated keys in a credentials file
are picked up without a restart, as the other methods' files are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from secrets_agent.backends.files import read_local
from secrets_agent.backends.vault.errors import CredentialSourceError
from secrets_agent.backends.vault.options import AwsIamAuth

DEFAULT_REGION = "us-east-1"  # hvac's, when neither the table nor the chain names one


@dataclass(frozen=True)
class AwsKeys:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    region: str  # the region the login request is signed for


def aws_keys(backend: str, options: AwsIamAuth) -> AwsKeys:
    """The chain's credentials now (after AssumeRole when ``role_arn`` is set)."""
    import botocore.session

    check_credentials_file(backend, options)
    session = botocore.session.Session(profile=options.profile or None)
    if options.credentials_file:  # before anything reads the profile map (built once)
        session.set_config_variable("credentials_file", options.credentials_file)
    if options.region:
        session.set_config_variable("region", options.region)
    region = session.get_config_variable("region") or DEFAULT_REGION
    credentials = session.get_credentials()
    if credentials is None:
        raise CredentialSourceError(
            backend,
            "no AWS credentials for the aws_iam login (environment, profile, credentials file, "
            "web identity, container or instance role)",
        )
    if options.role_arn:
        # Fetched here, not wrapped in botocore's refreshing credentials: each login asks
        # anew, and a refusal is one line of ours, not botocore's warning with a traceback.
        assumed = _assume_role(session, credentials, options, region)
        return AwsKeys(assumed["access_key"], assumed["secret_key"], assumed["token"], region)
    frozen = credentials.get_frozen_credentials()
    return AwsKeys(frozen.access_key, frozen.secret_key, frozen.token or None, region)


def _assume_role(session: Any, source: Any, options: AwsIamAuth, region: str) -> dict[str, Any]:
    from botocore.credentials import AssumeRoleCredentialFetcher

    fetcher = AssumeRoleCredentialFetcher(
        functools.partial(
            session.create_client,
            endpoint_url=options.sts_endpoint_url or None,
            region_name=region,
        ),
        source,
        options.role_arn,
        extra_args={"RoleSessionName": options.role_session_name},
    )
    fetched: dict[str, Any] = fetcher.fetch_credentials()
    return fetched


def check_credentials_file(backend: str, options: AwsIamAuth) -> None:
    """botocore skips a credentials file it cannot read; the agent says so instead."""
    if options.credentials_file:
        read_local(backend, options.credentials_file, "credentials", CredentialSourceError)
