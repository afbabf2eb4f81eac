"""The environment the Vault client's session would read per request, read once at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from secrets_agent.backends.vault.environment import ca_bundle, inert


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
