"""The agent's OCI image, built without any image registry and run with runc.

``deploy/image/build-oci`` makes a Debian rootfs with debootstrap, adds the two wheels and
their locked dependencies, and assembles an OCI image layout with umoci. The test reads the
image's config and layer, then unpacks it into a runtime bundle and runs it with runc (crun
1.8 refuses this machine's hybrid cgroup v1/v2 layout; runc runs there), and asks the agent
inside for a variable over its socket on a bind-mounted directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from support import ROOT
from support.helpers import body_of, need, raw_request
from support.loopback import registry_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and runc need root"),
]

TAG = "0.1.0"
UV = str(Path(sys.executable).parent / "uv")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool, package in (("debootstrap", "debootstrap"), ("umoci", "umoci")):
        need(tool, package)
    out = tmp_path_factory.mktemp("image") / "oci"
    subprocess.run(
        [str(ROOT / "deploy" / "image" / "build-oci"), str(out), TAG],
        check=True,
        env={**registry_env(), "UV": UV},  # debootstrap and uv reach the package registries
        timeout=1200,
        start_new_session=True,
        capture_output=True,
    )
    return out


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, value = digest.split(":")
    return layout / "blobs" / algorithm / value


def _blob(layout: Path, digest: str) -> bytes:
    return _blob_path(layout, digest).read_bytes()


def _manifest(layout: Path) -> dict[str, Any]:
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == TAG
    manifest: dict[str, Any] = json.loads(_blob(layout, entry["digest"]))
    return manifest


def test_image_config_and_content(layout: Path) -> None:
    manifest = _manifest(layout)
    config = json.loads(_blob(layout, manifest["config"]["digest"]))["config"]
    assert config["User"] == "50000:0"
    assert config["Entrypoint"] == ["/usr/local/bin/secrets-agent"]
    assert config["Cmd"] == ["run", "--config", "/etc/airflow-secrets-agent/config.toml"]
    names: set[str] = set()
    for layer in manifest["layers"]:
        with tarfile.open(_blob_path(layout, layer["digest"]), "r:gz") as tar:
            names.update(m.name.removeprefix("./") for m in tar)
    site = "opt/airflow-secrets-agent/site-packages"
    for expected in (
        "usr/local/bin/secrets-agent",
        "usr/bin/python3.11",
        f"{site}/secrets_agent/__main__.py",
        f"{site}/secrets_agent/backends/azure/backend.py",
        f"{site}/secrets_agent_client/backend.py",
        f"{site}/cryptography/__init__.py",
    ):
        assert expected in names, expected
    # The compiled read path, built for the image's CPython 3.11 (server/_hit.c).
    assert f"{site}/secrets_agent/server/_hit.cpython-311-x86_64-linux-gnu.so" in names
    # Compiled at build time for the image's CPython 3.11, so nothing compiles at start.
    assert f"{site}/secrets_agent/__pycache__/daemon.cpython-311.pyc" in names
    # Nothing that only builds or installs: no package lists, no wheels, no compiler.
    assert not any(n.startswith("var/lib/apt/lists/") and n.endswith("Packages") for n in names)
    assert not any(n.endswith(".whl") for n in names)
    assert "usr/bin/gcc" not in names and "usr/bin/pip3" not in names


@pytest.fixture
def bundle(layout: Path, short_tmp: Path) -> tuple[Path, Path]:
    """The image unpacked into a runtime bundle, with the config and socket directories."""
    bundle, config_dir, socket_dir = short_tmp / "bundle", short_tmp / "cfg", short_tmp / "run"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    config_dir.mkdir()
    socket_dir.mkdir(mode=0o700)
    os.chown(socket_dir, 50000, 0)  # the image's user owns its socket directory
    (config_dir / "variables.json").write_text(json.dumps({"greeting": "hello from the image"}))
    (config_dir / "config.toml").write_text(
        '[listener]\nsocket_path = "/run/airflow-secrets-agent/agent.sock"\n'
        "allowed_uids = [0]\n"  # the test itself asks, as root
        '[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "variables.json"\n'
    )
    spec_path = bundle / "config.json"
    spec = json.loads(spec_path.read_text())
    spec["process"]["terminal"] = False
    spec["root"]["readonly"] = True
    spec["mounts"] += [
        {
            "destination": "/etc/airflow-secrets-agent",
            "type": "bind",
            "source": str(config_dir),
            "options": ["rbind", "ro"],
        },
        {
            "destination": "/run/airflow-secrets-agent",
            "type": "bind",
            "source": str(socket_dir),
            "options": ["rbind", "rw"],
        },
    ]
    spec_path.write_text(json.dumps(spec))
    return bundle, socket_dir


def test_image_runs_and_answers_a_lookup(bundle: tuple[Path, Path]) -> None:
    runc = need("runc", "runc")
    path, socket_dir = bundle
    name = f"secrets-agent-test-{os.getpid()}"
    process = subprocess.Popen(
        [runc, "run", "--bundle", str(path), name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        socket_path = socket_dir / "agent.sock"
        deadline = time.monotonic() + 60  # a readiness wait, not a timing assertion
        while not socket_path.exists():
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the agent in the image made no socket in 60 s"
            time.sleep(0.05)
        assert socket_path.stat().st_uid == 50000  # the agent runs as the image's user
        answer = raw_request(
            str(socket_path), b"GET /v1/variables/greeting HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert body_of(answer)["value"] == "hello from the image"
        subprocess.run([runc, "kill", name, "TERM"], check=True, timeout=60)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output  # a graceful stop on SIGTERM
        assert "shutting down" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
        subprocess.run([runc, "delete", "--force", name], capture_output=True, timeout=60)
