"""The URL and endpoint checks the backends' options share: what an SDK would only fail on at
its first call (with a traceback, or retried forever) is a config error here."""

from __future__ import annotations

import pytest

from secrets_agent.config.validators import (
    check_authority,
    check_host_port,
    check_http_url,
    check_https_url,
    url_problem,
)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("http://[bad", "is not a valid URL"),
        ("http://[bad]:8200", "is not a valid URL"),
        ("http://", "must name a host"),
        ("http://:8200", "must name a host"),
        ("http://vault:99999", "must have a port in 1-65535"),
        ("http://vault:0", "must have a port in 1-65535"),
        ("http://vault:port", "must have a port in 1-65535"),
        ("http://va ult:8200", "must not hold spaces or control characters"),
        ("http://vault\t.local", "must not hold spaces or control characters"),
        ("http://va_ult!:8200", "has an invalid host"),
        ("http://a..b:8200", "has an invalid host"),
        ("vault.local:8200", "must start with http:// or https://"),
        ("ftp://vault", "must start with http:// or https://"),
    ],
)
def test_unusable_urls_are_refused(value: str, reason: str) -> None:
    found = url_problem(value)
    assert found is not None and found.startswith(reason), found


@pytest.mark.parametrize(
    "value", ["http://u:s3cret@va ult", "http://u:s3cret@[x", "https://u:s3cret@"]
)
def test_a_credential_in_a_refused_url_is_not_echoed(value: str) -> None:
    found = url_problem(value)
    assert found is not None and "s3cret" not in found


@pytest.mark.parametrize(
    "value",
    [
        "http://u:s3cret@vault:8200",
        "https://s3cret@v.vault.azure.net",
        "http://:s3cret@127.0.0.1:1",
    ],
)
def test_a_url_holding_credentials_is_refused(value: str) -> None:
    """They would sit in the config file and in whatever names the endpoint."""
    found = url_problem(value)
    assert found is not None and found.startswith("must not hold credentials"), found
    assert "s3cret" not in found


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:8200",
        "https://vault.example.internal:8200/",
        "https://[::1]:8200",
        "http://localhost",
        "https://vault_1.svc.cluster.local.",
        "https://bücher.example",
        "http://vault:",  # an empty port is the scheme's default, as requests reads it
    ],
)
def test_usable_urls_pass(value: str) -> None:
    assert url_problem(value) is None


def test_optional_required_and_tls_variants() -> None:
    assert check_http_url("") is None  # the SDK's default endpoint
    assert url_problem("") == "must start with http:// or https://"
    assert check_https_url("http://v.vault.azure.net") == "must start with https://"
    assert check_https_url("") == "must start with https://"
    assert check_https_url("https://v.vault.azure.net") is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", None),
        ("secretmanager.googleapis.com", None),
        ("127.0.0.1:8443", None),
        ("[::1]:8443", None),
        ("https://secretmanager.googleapis.com", "must be host[:port], not a URL"),
        ("host:99999", "must have a port in 1-65535"),
        ("bad host:443", "must not hold spaces"),
        ("[bad:443", "is not a valid URL"),
    ],
)
def test_grpc_endpoints_are_host_and_port(value: str, reason: str | None) -> None:
    found = check_host_port(value)
    assert found == reason if reason is None else (found or "").startswith(reason), found


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("login.microsoftonline.com", True),
        ("https://127.0.0.1:4443", True),
        ("http://login.example", False),  # azure-identity refuses a plain-HTTP authority
        ("https://[bad", False),
        ("log in.example", False),
        ("log+in.example", False),
    ],
)
def test_authority_is_a_host_or_an_https_url(value: str, ok: bool) -> None:
    assert (check_authority(value) is None) is ok
