"""AWS credentials for Vault's aws (iam) login: the shared chain, its failures worded as the
Vault backend's credential errors (a start fails on them, as on a missing token file)."""

from __future__ import annotations

from secrets_agent.backends.aws_chain import AwsKeys, NoCredentials
from secrets_agent.backends.aws_chain import aws_keys as chain_keys
from secrets_agent.backends.files import read_local
from secrets_agent.backends.vault.errors import CredentialSourceError
from secrets_agent.backends.vault.options import AwsIamAuth


def aws_keys(backend: str, options: AwsIamAuth) -> AwsKeys:
    """The chain's credentials for a login now (blocking: the login's worker thread)."""
    try:
        return chain_keys(options)
    except NoCredentials as exc:
        raise CredentialSourceError(backend, f"aws_iam login: {exc}") from None


def check_credentials_file(backend: str, options: AwsIamAuth) -> None:
    """botocore skips a credentials file it cannot read; the agent says so instead."""
    if options.credentials_file:
        read_local(backend, options.credentials_file, "credentials", CredentialSourceError)
