"""Airflow's own CLI lists the client as a provider with its secrets backend."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from secrets_agent_client.provider import get_provider_info
from support import ROOT
from support.airflow_env import CLIENT, ensure_venv


def test_entry_point_names_the_provider_info_function() -> None:
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["apache_airflow_provider"]["provider_info"]
    assert target == "secrets_agent_client.provider:get_provider_info"
    info = get_provider_info()
    assert info["package-name"] == project["name"] == "airflow-secrets-agent-client"
    assert info["secrets-backends"] == [CLIENT]


@pytest.mark.integration
@pytest.mark.airflow
@pytest.mark.parametrize("version", ["3.3.2", "2.10.5"])
def test_airflow_providers_secrets_lists_the_backend(tmp_path: Path, version: str) -> None:
    venv = ensure_venv(version)  # the client is (re)installed into it from this checkout
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
            env=env,
        )

    listed = run("airflow", "providers", "secrets", "-o", "json")
    assert {"secrets_backend_class_name": CLIENT} in json.loads(listed.stdout)
    got = run("airflow", "providers", "get", "airflow-secrets-agent-client", "--full", "-o", "json")
    (info,) = json.loads(got.stdout)
    assert info["package-name"] == "airflow-secrets-agent-client"
    assert info["secrets-backends"] == [CLIENT]
    # Airflow validates provider info against its schema and drops what fails: check it too.
    schema_check = (
        "import json, jsonschema, importlib.resources as r; "
        "from secrets_agent_client.provider import get_provider_info; "
        "text = r.files('airflow').joinpath('provider_info.schema.json').read_text(); "
        "jsonschema.validate(get_provider_info(), json.loads(text))"
    )
    run("python", "-c", schema_check)
    assert "airflow-secrets-agent-client" not in listed.stderr  # no "invalid provider" warning
