"""Azurite's queue service from npm (azurite 3.35.0, the last on Node 20), on loopback.

``scripts/test`` installs it into ``.npm-tools/`` (git-ignored). Telemetry is off; the API
version check is skipped (azure-storage-queue asks for versions newer than Azurite knows).
Given a certificate, it serves HTTPS and accepts Entra ID bearer tokens (``--oauth basic``:
audience, issuer and lifetime are checked, the signature is not) beside the account key.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from support.bao import free_port

ROOT = Path(__file__).resolve().parents[2]
AZURITE_QUEUE = ROOT / ".npm-tools" / "node_modules" / ".bin" / "azurite-queue"
ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key: not a secret.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def key_vault_event(
    name: str, version: str, kind: str = "SecretNewVersionCreated"
) -> dict[str, Any]:
    """A Key Vault event as Event Grid puts it on a queue (Event Grid schema)."""
    return {
        "id": "1",
        "eventType": f"Microsoft.KeyVault.{kind}",
        "eventTime": datetime.now(UTC).isoformat(),
        "subject": name,
        "data": {"ObjectType": "Secret", "ObjectName": name, "VaultName": "v", "Version": version},
    }


def azurite_path() -> Path:
    """The installed azurite-queue: skipped where absent, but a failure in CI."""
    if AZURITE_QUEUE.exists() and shutil.which("node"):
        return AZURITE_QUEUE
    reason = "azurite is not installed (npm install --prefix .npm-tools azurite@3.35.0)"
    if os.environ.get("CI"):
        pytest.fail(reason + "; scripts/test installs it")
    pytest.skip(reason)


class Azurite:
    def __init__(self, workdir: Path, tls: tuple[bytes, bytes] | None = None) -> None:
        """``tls``: (key PEM, certificate PEM) to serve HTTPS with, and accept bearer tokens."""
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.scheme = "https" if tls else "http"
        self._flags: list[str] = []
        if tls:
            key, cert = workdir / "azurite-key.pem", workdir / "azurite-cert.pem"
            key.write_bytes(tls[0])
            cert.write_bytes(tls[1])
            self._flags = ["--cert", str(cert), "--key", str(key), "--oauth", "basic"]

    @property
    def account_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT};"
            f"AccountKey={ACCOUNT_KEY};QueueEndpoint={self.account_url};"
        )

    def start(self) -> None:
        command = [
            str(azurite_path()),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(self.port),
            "--location",
            str(self.workdir),
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--silent",
            *self._flags,
        ]
        with (self.workdir / "azurite.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=log, cwd=self.workdir, start_new_session=True
            )
        deadline = time.monotonic() + 120
        while not _answers(self.port):  # readiness: the port accepts connections
            if self.process.poll() is not None:
                raise RuntimeError(f"azurite exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("azurite did not listen within 120 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=30)
        self.process = None


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True
