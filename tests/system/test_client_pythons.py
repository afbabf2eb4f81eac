"""The client's unit tests on every Python Airflow runs on (3.9-3.13), each in its own venv.

The venvs hold only the test runner (``tests/client/requirements-pythons.txt``) and the client
distribution, installed from its folder with compiled bytecode: what an Airflow image gets.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from support.loopback import registry_env
from support.pythons import CLIENT_PYTHONS, interpreter

UV = str(Path(sys.executable).parent / "uv")
RUNNER_LOCK = ROOT / "tests" / "client" / "requirements-pythons.txt"

pytestmark = pytest.mark.integration


def client_venv(minor: str) -> Path:
    venv = ROOT / ".venvs" / f"client-py{minor}"
    stamp = venv / ".lock-sha256"
    digest = hashlib.sha256(RUNNER_LOCK.read_bytes()).hexdigest()
    env = {**registry_env(), "VIRTUAL_ENV": str(venv), "UV_COMPILE_BYTECODE": "1"}
    if not stamp.exists() or stamp.read_text() != digest:
        python = interpreter(minor)
        subprocess.run([UV, "venv", "-q", "--clear", "--python", python, str(venv)], check=True)
        subprocess.run([UV, "pip", "sync", "-q", str(RUNNER_LOCK)], check=True, env=env)
        stamp.write_text(digest)
    subprocess.run(
        [
            UV,
            "pip",
            "install",
            "-q",
            "--reinstall-package",
            "airflow-secrets-agent-client",
            str(ROOT / "client"),
        ],
        check=True,
        env=env,
    )
    return venv


@pytest.mark.parametrize("minor", CLIENT_PYTHONS)
def test_client_suite_passes_on(minor: str) -> None:
    venv = client_venv(minor)
    requires = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.requires('airflow-secrets-agent-client'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert requires.stdout.strip() == "None"  # the distribution declares no dependency at all
    result = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/client",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"client tests on Python {minor}:\n{result.stdout[-4000:]}"
    assert " passed" in result.stdout
