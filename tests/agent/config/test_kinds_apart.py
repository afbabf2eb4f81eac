"""check-config (and the start) say when a backend's kinds nest; with rules, one namespace for
two kinds is a config error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.config.loader import parse_config
from secrets_agent.errors import ConfigError
from support.helpers import write_config

NESTED = {"name": "sm", "type": "aws_secrets_manager", "connections_prefix": "airflow"}
RULES = [{"uid": os.getuid(), "connections": ["*"], "variables": ["public_*"]}]


def test_nested_prefixes_are_a_warning_naming_the_backend_and_the_keys() -> None:
    config = parse_config({"backends": [NESTED]}, Path("/"))
    head = "backends[0].variables_prefix (backend 'sm'): lies inside connections_prefix: "
    said = [w for w in config.warnings if w.startswith(head)]
    assert len(said) == 1
    assert 'the connection "variables/x" reads the secret of the variable "x"' in said[0]
    assert "as Airflow's backend reads it" in said[0]
    assert any(w.startswith("backends[0].config_prefix (backend 'sm')") for w in config.warnings)


def test_with_rules_the_warning_says_the_reads_are_fenced() -> None:
    config = parse_config({"backends": [NESTED], "access": RULES}, Path("/"))
    said = [w for w in config.warnings if w.startswith("backends[0].variables_prefix")]
    assert "around the [[access]] rules on variables" in said[0]
    assert "answers such connection ids as not found" in said[0]


def test_default_layouts_say_nothing() -> None:
    backends = [
        {"name": "sm", "type": "aws_secrets_manager"},
        {"name": "ssm", "type": "aws_ssm"},
        {"name": "v", "type": "vault", "url": "http://127.0.0.1:8200"},
        {"name": "g", "type": "gcp_secret_manager"},
        {"name": "a", "type": "azure_key_vault", "vault_url": "https://v.vault.azure.net"},
        {"name": "e", "type": "env"},
    ]
    assert parse_config({"backends": backends, "access": RULES}, Path("/")).warnings == ()


def test_one_namespace_for_two_kinds_is_a_config_error_with_rules_only() -> None:
    same: dict[str, Any] = {"name": "v", "type": "vault", "url": "http://127.0.0.1:8200"}
    same |= {"connections_path": "", "variables_path": "", "kinds": ["connections", "variables"]}
    config = parse_config({"backends": [same]}, Path("/"))
    assert [w.split(":")[0] for w in config.warnings] == [
        "backends[0].variables_path (backend 'v')"
    ]
    with pytest.raises(ConfigError) as raised:
        parse_config({"backends": [same], "access": RULES}, Path("/"))
    assert "backends[0].variables_path (backend 'v'): names the same secrets as " in str(
        raised.value
    )
    assert "cannot keep connections and variables apart" in str(raised.value)


def test_check_config_prints_the_warning_and_refuses_the_error(tmp_path: Path) -> None:
    body = '[[backends]]\nname = "sm"\ntype = "aws_secrets_manager"\nconnections_prefix = ""\n'
    rules = f'[[access]]\nuid = {os.getuid()}\nconnections = ["*"]\n'

    def check(text: str) -> subprocess.CompletedProcess[str]:
        path = write_config(tmp_path, text)
        command = [sys.executable, "-m", "secrets_agent", "check-config", str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    nested = check(body + rules)
    assert nested.returncode == 0, nested.stderr
    assert "warning: backends[0].variables_prefix (backend 'sm'): lies inside" in nested.stderr
    same = check(body.replace('""', '"airflow/variables"') + rules)
    assert same.returncode == 78
    assert "backends[0].variables_prefix (backend 'sm'): names the same secrets" in same.stderr
