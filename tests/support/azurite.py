"""Azurite's queue service from npm (azurite 3.35.0, the last on Node 20), on loopback.

``scripts/test`` installs it into ``.npm-tools/`` (git-ignored). Telemetry is off; the API
version check is skipped (azure-storage-queue asks for versions newer than Azurite knows).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support.bao import free_port

ROOT = Path(__file__).resolve().parents[2]
AZURITE_QUEUE = ROOT / ".npm-tools" / "node_modules" / ".bin" / "azurite-queue"
ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key: not a secret.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def azurite_path() -> Path:
    """The installed azurite-queue: skipped where absent, but a failure in CI."""
    if AZURITE_QUEUE.exists() and shutil.which("node"):
        return AZURITE_QUEUE
    reason = "azurite is not installed (npm install --prefix .npm-tools azurite@3.35.0)"
    if os.environ.get("CI"):
        pytest.fail(reason + "; scripts/test installs it")
    pytest.skip(reason)


class Azurite:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint={self.account_url};"
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
