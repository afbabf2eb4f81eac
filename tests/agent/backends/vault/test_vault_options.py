"""Vault's auth tables: ``auth_method`` picks the one that logs in (docs/backends/vault.md), so
a table for another method is refused rather than ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from secrets_agent.backends.vault.options import AUTH_METHODS
from secrets_agent.config.loader import parse_config
from secrets_agent.errors import ConfigError

BASE = {"name": "v", "type": "vault", "url": "https://vault.local:8200"}
TABLES: dict[str, dict[str, Any]] = {
    "token": {"token_file": "/run/token"},
    "approle": {"role_id": "r", "secret_id_file": "/run/secret-id"},
    "jwt": {"role": "r", "jwt_file": "/run/jwt"},
    "kubernetes": {"role": "r"},
    "userpass": {"username": "u", "password_file": "/run/pw"},
    "ldap": {"username": "u", "password_file": "/run/pw"},
    "aws_iam": {"role": "r"},
    "cert": {"name": "c"},
}


def load(table: dict[str, Any]) -> list[str]:
    try:
        parse_config({"backends": [BASE | table]}, Path("/"))
    except ConfigError as exc:
        return exc.problems
    return []


def test_every_method_has_a_table_here() -> None:
    assert set(TABLES) == set(AUTH_METHODS)


def test_an_approle_table_without_its_auth_method_is_refused() -> None:
    """The tester's case: ``run`` went on to say "no token: set token, token_file or
    $VAULT_TOKEN", which hides that the approle table was never used."""
    problems = load({"approle": TABLES["approle"]})
    assert problems == [
        'backends[0].approle: [backends.approle] is for auth_method = "approle", but this '
        'backend\'s auth_method is "token": set auth_method = "approle" or drop the table'
    ]


@pytest.mark.parametrize("method", AUTH_METHODS)
def test_only_the_selected_methods_table_is_accepted(method: str) -> None:
    client = {"client_cert": "/c.pem", "client_key": "/k.pem"} if method == "cert" else {}
    assert load({"auth_method": method, method: TABLES[method], **client}) == []
    for other in AUTH_METHODS:
        if other == method:
            continue
        problems = load({"auth_method": method, method: TABLES[method], other: TABLES[other]})
        assert any(
            p.startswith(f"backends[0].{other}: ") and f'auth_method is "{method}"' in p
            for p in problems
        ), problems
