"""The two distributions as users install them: built wheels, a bare venv, the console script."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from support import ROOT
from support.loopback import registry_env
from support.pythons import interpreter

UV = str(Path(sys.executable).parent / "uv")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    for folder in ("client", "agent"):
        subprocess.run(
            [UV, "build", "-q", "--wheel", "--out-dir", str(out), str(ROOT / folder)],
            check=True,
            env=registry_env(),
            timeout=600,
        )
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    return {
        "client": found["airflow_secrets_agent_client"],
        "agent": found["airflow_secrets_agent"],
    }


def metadata(wheel: Path) -> tuple[list[str], dict[str, list[str]]]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(meta).decode())
    fields: dict[str, list[str]] = {}
    for key, value in message.items():
        fields.setdefault(key, []).append(value)
    return names, fields


def installed(pip: list[str]) -> set[str]:
    listing = subprocess.run(
        [*pip, "list", "--format=json"], capture_output=True, text=True, check=True
    )
    return {item["name"] for item in json.loads(listing.stdout)}


def test_the_client_wheel_is_stdlib_only_for_python_39(wheels: dict[str, Path]) -> None:
    names, fields = metadata(wheels["client"])
    assert fields["Name"] == ["airflow-secrets-agent-client"]
    assert fields["Requires-Python"] == [">=3.9"]
    assert "Requires-Dist" not in fields
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"secrets_agent_client"}
    assert "secrets_agent_client/py.typed" in names


def test_the_agent_wheel_depends_on_the_client_and_has_the_script(
    wheels: dict[str, Path],
) -> None:
    names, fields = metadata(wheels["agent"])
    assert fields["Name"] == ["airflow-secrets-agent"]
    assert fields["Requires-Python"] == [">=3.11"]
    assert "airflow-secrets-agent-client" in fields["Requires-Dist"]
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"secrets_agent"}
    with zipfile.ZipFile(wheels["agent"]) as archive:
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "secrets-agent = secrets_agent.cli:main" in archive.read(entry_points).decode()


def test_pip_install_of_the_client_on_python_39_installs_nothing_else(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "py39"
    subprocess.run([interpreter("3.9"), "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    before = installed(pip)
    subprocess.run(
        [*pip, "install", "-q", "--no-index", "--compile", str(wheels["client"])],
        check=True,
        timeout=300,
    )
    assert installed(pip) - before == {"airflow-secrets-agent-client"}
    code = "from secrets_agent_client import AgentSecretsBackend as B; print(B().socket_path)"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "/run/airflow-secrets-agent/agent.sock"


def test_installing_the_agent_gives_the_console_script(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "agent"
    env = {**registry_env(), "VIRTUAL_ENV": str(venv), "UV_COMPILE_BYTECODE": "1"}
    subprocess.run(
        [UV, "venv", "-q", "--python", interpreter("3.11"), str(venv)], check=True, timeout=300
    )
    # The locked versions, so the install is the one the suite tested.
    pins = tmp_path / "pins.txt"
    exported = subprocess.run(
        [
            UV,
            "export",
            "-q",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--no-emit-workspace",
            "--package",
            "airflow-secrets-agent",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=300,
    )
    pins.write_text(exported.stdout)
    subprocess.run(
        [UV, "pip", "install", "-q", "-c", str(pins), str(wheels["agent"]), str(wheels["client"])],
        check=True,
        env=env,
        timeout=900,
    )
    result = subprocess.run(
        [str(venv / "bin" / "secrets-agent"), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "check-config" in result.stdout
