"""The environment the Vault client's session would read per request, read once at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from secrets_agent.backends.vault.environment import ca_bundle, direct, inert


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))  # expanduser reads the process's own HOME
    return tmp_path


def test_no_proxy_variable_and_no_netrc_file_is_inert() -> None:
    assert inert({"PATH": "/usr/bin", "LANG": "C.UTF-8"})


@pytest.mark.parametrize(
    "name", ["HTTP_PROXY", "https_proxy", "ALL_PROXY", "No_Proxy", "ftp_proxy"]
)
def test_any_proxy_variable_with_a_value_is_not(name: str) -> None:
    assert not inert({name: "http://127.0.0.1:9"})
    assert inert({name: ""})


@pytest.mark.parametrize("name", [".netrc", "_netrc"])
def test_a_netrc_file_in_home_is_not(home: Path, name: str) -> None:
    assert inert({})
    (home / name).write_text("machine vault login u password p\n")
    assert not inert({})


def test_netrc_names_the_only_file_looked_at(home: Path) -> None:
    (home / ".netrc").write_text("machine vault login u password p\n")
    assert inert({"NETRC": str(home / "absent")})
    assert not inert({"NETRC": str(home / ".netrc")})


def test_ca_bundle_variables_replace_plain_true_only() -> None:
    both = {"REQUESTS_CA_BUNDLE": "/r.pem", "CURL_CA_BUNDLE": "/c.pem"}
    assert ca_bundle(True, both) == "/r.pem"
    assert ca_bundle(True, {"CURL_CA_BUNDLE": "/c.pem"}) == "/c.pem"
    assert ca_bundle(True, {"REQUESTS_CA_BUNDLE": ""}) is True
    assert ca_bundle(False, both) is False
    assert ca_bundle("/mine.pem", both) == "/mine.pem"


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("NETRC", raising=False)
    return monkeypatch


def test_direct_when_nothing_stands_between(no_proxies: pytest.MonkeyPatch) -> None:
    assert direct("https://vault.internal:8200")


@pytest.mark.parametrize(
    ("variables", "url", "expected"),
    [
        ({"https_proxy": "http://proxy:3128"}, "https://vault.internal:8200", False),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://vault.internal:8200", False),
        ({"https_proxy": "http://proxy:3128"}, "http://vault.internal:8200", True),  # not its
        ({"all_proxy": "http://proxy:3128"}, "http://vault.internal:8200", False),
        (
            {"https_proxy": "http://proxy:3128", "no_proxy": "vault.internal"},
            "https://vault.internal:8200",
            True,
        ),
        (
            {"https_proxy": "http://proxy:3128", "no_proxy": ".internal"},
            "https://vault.internal:8200",
            True,
        ),
        (
            {"http_proxy": "http://proxy:3128", "NO_PROXY": "127.0.0.1"},
            "http://127.0.0.1:8200",
            True,
        ),
    ],
)
def test_direct_unless_a_proxy_applies_to_the_url(
    no_proxies: pytest.MonkeyPatch, variables: dict[str, str], url: str, expected: bool
) -> None:
    for name, value in variables.items():
        no_proxies.setenv(name, value)
    assert direct(url) is expected


def test_not_direct_where_netrc_has_a_login_for_the_host(
    no_proxies: pytest.MonkeyPatch, home: Path
) -> None:
    netrc = home / ".netrc"
    netrc.write_text("machine other.internal login u password p\n")
    netrc.chmod(0o600)
    assert direct("https://vault.internal:8200")
    netrc.write_text("machine vault.internal login u password p\n")
    assert not direct("https://vault.internal:8200")
