"""The two distributions as users install them: built wheels, a bare venv, the console script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from secrets_agent_client import AgentSecretsBackend
from support import ROOT
from support.helpers import DEMO_BACKEND, demo_files, stop_process, wait_for_socket, write_config
from support.loopback import registry_env
from support.pythons import interpreter

UV = str(Path(sys.executable).parent / "uv")

pytestmark = pytest.mark.integration


DISTRIBUTIONS = {"client": "airflow_secrets_agent_client", "agent": "airflow_secrets_agent"}
TESTS_OR_BYTECODE = re.compile(r"(^|/)(tests?|conftest\.py|__pycache__)(/|$)")


def build(out: Path, *constraints: str) -> dict[str, Path]:
    """Each distribution's sdist, and its wheel built from that sdist (as pip builds one)."""
    options = []
    if constraints:
        (out / "constraints.txt").write_text("\n".join(constraints) + "\n")
        options = ["--build-constraint", str(out / "constraints.txt")]
    for folder in DISTRIBUTIONS:
        subprocess.run(
            [UV, "build", "-q", *options, "--out-dir", str(out), str(ROOT / folder)],
            check=True,
            env=registry_env(),
            timeout=600,
        )
    return {p.name: p for p in out.iterdir() if p.name.endswith((".whl", ".tar.gz"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def wheels(built: dict[str, Path]) -> dict[str, Path]:
    found = {p.name.split("-")[0]: p for p in built.values() if p.suffix == ".whl"}
    return {folder: found[name] for folder, name in DISTRIBUTIONS.items()}


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
    # Bounded to the same minor version: the agent's CLI uses the client's wire module.
    assert "airflow-secrets-agent-client<0.2,>=0.1.0" in fields["Requires-Dist"]
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"secrets_agent"}
    with zipfile.ZipFile(wheels["agent"]) as archive:
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "secrets-agent = secrets_agent.cli:main" in archive.read(entry_points).decode()


@pytest.mark.parametrize("folder", DISTRIBUTIONS)
def test_the_sdist_holds_the_package_its_readme_and_no_tests(
    built: dict[str, Path], folder: str
) -> None:
    (sdist,) = [
        p for n, p in built.items() if n.startswith(f"{DISTRIBUTIONS[folder]}-") and ".tar" in n
    ]
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    package = "secrets_agent_client" if folder == "client" else "secrets_agent"
    assert f"src/{package}/py.typed" in names
    assert {n.split("/")[0] for n in names} == {
        "LICENSE",
        "PKG-INFO",
        "README.md",
        "pyproject.toml",
        "setup.cfg",
        "src",
    }
    assert [n for n in names if TESTS_OR_BYTECODE.search(n)] == []


@pytest.mark.parametrize("folder", DISTRIBUTIONS)
def test_the_wheel_holds_only_sources_py_typed_and_metadata(
    wheels: dict[str, Path], folder: str
) -> None:
    names, fields = metadata(wheels[folder])
    # The agent's read path, compiled (server/_hit.c), and its stub for type checkers.
    compiled = [n for n in names if re.fullmatch(r"secrets_agent/server/_hit\..+\.so", n)]
    assert len(compiled) == (folder == "agent")
    extension = {*compiled, "secrets_agent/server/_hit.pyi"} if folder == "agent" else set()
    stray = [
        n
        for n in names
        if ".dist-info/" not in n and not n.endswith((".py", "/py.typed")) and n not in extension
    ]
    assert stray == []
    # The license the metadata names, its text beside it (Apache-2.0 asks for a copy).
    assert fields["License-Expression"] == ["Apache-2.0"]
    assert fields["License-File"] == ["LICENSE"]
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    with zipfile.ZipFile(wheels[folder]) as archive:
        assert b"Apache License" in archive.read(license_file)
    assert [n for n in names if TESTS_OR_BYTECODE.search(n)] == []


@pytest.mark.parametrize("folder", DISTRIBUTIONS)
def test_the_readme_index_pages_show_has_no_relative_links(
    wheels: dict[str, Path], folder: str
) -> None:
    """PyPI shows the README as the project page, where a link to ../README.md is a 404."""
    _, fields = metadata(wheels[folder])
    assert fields["Description-Content-Type"] == ["text/markdown"]
    with zipfile.ZipFile(wheels[folder]) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        description = archive.read(meta).decode().split("\n\n", 1)[1]
    assert "pip install" in description
    links = re.findall(r"\]\(([^)\s]+)", description)
    assert [link for link in links if not link.startswith("https://")] == []


def test_both_build_with_the_oldest_setuptools_they_declare(tmp_path: Path) -> None:
    """A pinned or distribution setuptools at the declared minimum must still build them."""
    oldest = set()
    for folder in DISTRIBUTIONS:
        requires = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["build-system"]
        (bound,) = [r for r in requires["requires"] if r.startswith("setuptools")]
        declared = re.fullmatch(r"setuptools>=(\d+)", bound)
        assert declared, bound
        oldest.add(declared.group(1))
    (major,) = oldest
    found = build(tmp_path, f"setuptools=={major}.*")
    assert len(found) == 4
    with zipfile.ZipFile(next(p for p in found.values() if p.suffix == ".whl")) as archive:
        wheel = next(n for n in archive.namelist() if n.endswith(".dist-info/WHEEL"))
        assert f"setuptools ({major}." in archive.read(wheel).decode()


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


IMPORT_EVERY_MODULE = """
import importlib, pkgutil, secrets_agent
for found in pkgutil.walk_packages(secrets_agent.__path__, "secrets_agent."):
    if not found.name.endswith("__main__"):
        importlib.import_module(found.name)
"""


def test_the_oldest_dependencies_the_agent_declares_import_and_serve(
    wheels: dict[str, Path], tmp_path: Path, short_tmp: Path
) -> None:
    """A constraints file (Airflow's, a platform's) may hold each dependency at its floor: the
    agent must import, and serve, with every one of them at the oldest version it accepts."""
    venv = tmp_path / "oldest"
    env = {**registry_env(), "VIRTUAL_ENV": str(venv), "UV_COMPILE_BYTECODE": "1"}
    subprocess.run(
        [UV, "venv", "-q", "--python", interpreter("3.11"), str(venv)], check=True, timeout=300
    )
    project = tomllib.loads((ROOT / "agent" / "pyproject.toml").read_text())["project"]
    floors = [d for d in project["dependencies"] if not d.startswith("airflow-secrets-agent")]
    assert all(">=" in d for d in floors)
    packages = [*floors, str(wheels["agent"]), str(wheels["client"])]
    subprocess.run(
        [UV, "pip", "install", "-q", "--resolution", "lowest-direct", *packages],
        check=True,
        env=env,
        timeout=900,
    )
    python = str(venv / "bin" / "python")
    result = subprocess.run([python, "-c", IMPORT_EVERY_MODULE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    demo_files(short_tmp)
    config = write_config(
        short_tmp, f'[listener]\nsocket_path = "{short_tmp}/agent.sock"\n' + DEMO_BACKEND
    )
    process = subprocess.Popen(
        [str(venv / "bin" / "secrets-agent"), "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_socket(short_tmp / "agent.sock", process)
        client = AgentSecretsBackend(socket_path=str(short_tmp / "agent.sock"))
        assert client.get_variable("greeting") == "hello"
    finally:
        log = stop_process(process)
    assert process.returncode == 0, log
