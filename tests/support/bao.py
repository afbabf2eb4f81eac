"""A real OpenBao server (Vault-API compatible) on loopback, started from the test suite."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BAO = str(Path(sys.executable).parent / "bao")
ROOT_TOKEN = "root-token-for-tests"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class BaoServer:
    """``dev`` mode (in memory, optionally TLS) or ``persistent`` (raft storage, restartable).

    ``extra_config``: HCL added to a dev server (e.g. an ``audit`` device: OpenBao only
    enables those from its config, never through the API).
    """

    def __init__(
        self, workdir: Path, *, tls: bool = False, persistent: bool = False, extra_config: str = ""
    ) -> None:
        self.workdir, self.tls, self.persistent = workdir, tls, persistent
        self.extra_config = extra_config
        self.port = free_port()
        self.cluster_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.root_token = ROOT_TOKEN
        self._unseal_key: str | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return str(self.workdir / "certs" / "vault-ca.pem")

    def start(self) -> None:
        env = {**os.environ, "HOME": str(self.workdir), "BAO_ADDR": self.url}
        if self.persistent:
            config = self.workdir / "server.hcl"
            (self.workdir / "data").mkdir(exist_ok=True)
            config.write_text(
                f'storage "raft" {{\n path = "{self.workdir}/data"\n node_id = "test"\n}}\n'
                f'listener "tcp" {{\n address = "127.0.0.1:{self.port}"\n'
                f' cluster_address = "127.0.0.1:{self.cluster_port}"\n tls_disable = true\n}}\n'
                f'api_addr = "{self.url}"\n'
                f'cluster_addr = "http://127.0.0.1:{self.cluster_port}"\n'
            )
            args = [BAO, "server", f"-config={config}"]
        else:
            args = [
                BAO,
                "server",
                "-dev",
                f"-dev-root-token-id={ROOT_TOKEN}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
            ]
            if self.extra_config:
                (self.workdir / "extra.hcl").write_text(self.extra_config)
                args.append(f"-config={self.workdir / 'extra.hcl'}")
            if self.tls:
                (self.workdir / "certs").mkdir(exist_ok=True)
                args += ["-dev-tls", f"-dev-tls-cert-dir={self.workdir / 'certs'}"]
        with (self.workdir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                args,
                env=env,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                start_new_session=True,  # its own process group, apart from pytest's signals
            )
        try:
            self._wait_until_answering()
            if self.persistent:
                self._init_and_unseal()
        except BaseException:
            self.stop()  # a server that never came up is not left behind
            raise

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + 180
        while True:
            try:
                self.api("GET", "/v1/sys/health?sealedcode=200&uninitcode=200", token=None)
                return
            except (OSError, urllib.error.URLError):
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"bao exited: see {self.workdir}/server.log") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling for readiness, not timing behaviour

    def _init_and_unseal(self) -> None:
        status = self.api("GET", "/v1/sys/init", token=None)
        if not status["initialized"]:
            answer = self.api(
                "PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1}, token=None
            )
            self._unseal_key, self.root_token = answer["keys"][0], answer["root_token"]
        self.api("PUT", "/v1/sys/unseal", {"key": self._unseal_key}, token=None)
        deadline = time.monotonic() + 120
        while self.api(
            "GET",
            "/v1/sys/health?standbycode=200&sealedcode=200&uninitcode=200&perfstandbyok=true",
            token=None,
        ).get("standby", True):
            if time.monotonic() > deadline:
                raise RuntimeError("bao did not become active")
            time.sleep(0.05)

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = "", namespace: str = ""
    ) -> Any:
        """Call the HTTP API directly (as an operator would); ``token=""`` means root."""
        headers = {"Content-Type": "application/json"}
        token = self.root_token if token == "" else token
        if token:
            headers["X-Vault-Token"] = token
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        context = ssl.create_default_context(cafile=self.ca_file) if self.tls else None
        try:
            # A wide margin: raft's init and unseal fsync a lot on a busy, fresh machine.
            with urllib.request.urlopen(request, timeout=60, context=context) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            exc.close()
            raise RuntimeError(f"{method} {path}: {exc.code} {detail}") from None
        return json.loads(raw) if raw else {}

    def kv_put(
        self,
        path: str,
        data: dict[str, Any],
        mount: str = "secret",
        version: int = 2,
        namespace: str = "",
    ) -> None:
        body = {"data": data} if version == 2 else data
        prefix = f"{mount}/data" if version == 2 else mount
        deadline = time.monotonic() + 120
        while True:
            try:
                self.api("POST", f"/v1/{prefix}/{path}", body, namespace=namespace)
                return
            except RuntimeError as exc:
                # A KV v2 mount just created upgrades its storage first and refuses writes
                # until it is done: wait for that readiness, not a fixed time.
                if "Upgrading from non-versioned to versioned" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@contextlib.contextmanager
def persistent_kv2(workdir: Path) -> Iterator[BaoServer]:
    """A raft-backed (restartable) server with KV v2 at ``secret/``, stopped on the way out."""
    server = BaoServer(workdir, persistent=True)
    server.start()
    try:
        server.api("POST", "/v1/sys/mounts/secret", {"type": "kv", "options": {"version": "2"}})
        yield server
    finally:
        server.stop()


def vault_backend_toml(server: BaoServer, token: str | None = None, extra: str = "") -> str:
    """A ``[[backends]]`` table for the agent: token auth (root by default), quick backoff."""
    return f"""
        [[backends]]
        name = "vault"
        type = "vault"
        url = "{server.url}"
        auth_method = "token"
        backoff_initial = 0.05
        backoff_max = 0.2
        timeout = 3
        {extra}
        [backends.token]
        token = "{server.root_token if token is None else token}"
    """


def audit_device(log: Path) -> str:
    """``extra_config`` for a file audit device writing to ``log`` (count reads with
    ``audited_reads``)."""
    return f'audit "file" "to-file" {{\n  options {{\n    file_path = "{log}"\n  }}\n}}\n'


def audited_reads(log: Path, path: str) -> int:
    """KV reads of one path (``secret/data/...``) as the audit device recorded them."""
    return sum(
        1
        for entry in map(json.loads, log.read_text().splitlines())
        if entry.get("type") == "response"
        and entry["request"].get("path") == path
        and entry["request"].get("operation") == "read"
    )
