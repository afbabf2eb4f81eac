"""Vault's cert method against OpenBao: the TLS client certificate is the credential."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.backends.base import BackendContext
from secrets_agent.backends.vault.backend import VaultBackend
from secrets_agent.backends.vault.options import CertAuth, VaultOptions
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics
from support.bao import BaoServer, free_port
from support.helpers import FakeClock
from support.tls import issued_by, self_signed

V = Kind.VARIABLE
POLICY = 'path "secret/data/variables/*" { capabilities = ["read"] }'


class CertVault:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        ca_key, ca_cert = self_signed()
        stranger_ca_key, stranger_ca_cert = self_signed()
        files = {"ca.pem": ca_cert}
        for who in ("server", "client"):
            key, cert = issued_by(ca_key, ca_cert, who)
            files[f"{who}.key"], files[f"{who}.pem"] = key, cert
        files["stranger.key"], files["stranger.pem"] = issued_by(
            stranger_ca_key, stranger_ca_cert, "stranger"
        )
        for name, data in files.items():
            (workdir / name).write_bytes(data)
        self.ca_cert = ca_cert.decode()
        port = free_port()
        # A listener that asks for a client certificate and accepts any (as Vault's default):
        # the cert method, not the listener, decides whose certificate logs in.
        listener = (
            f'listener "tcp" {{\n address = "127.0.0.1:{port}"\n'
            f' tls_cert_file = "{workdir}/server.pem"\n tls_key_file = "{workdir}/server.key"\n}}\n'
        )
        self.url = f"https://127.0.0.1:{port}"
        self.server = BaoServer(workdir / "bao", extra_config=listener)

    def start(self) -> None:
        api = self.server.api
        self.server.start()
        api("PUT", "/v1/sys/policies/acl/airflow", {"policy": POLICY})
        api("POST", "/v1/sys/auth/cert", {"type": "cert"})
        api("POST", "/v1/sys/auth/certs-b", {"type": "cert"})
        role = {"certificate": self.ca_cert, "token_policies": ["airflow"], "token_ttl": "60s"}
        api("POST", "/v1/auth/cert/certs/airflow", role)
        api("POST", "/v1/auth/certs-b/certs/workers", role)
        self.server.kv_put("variables/greeting", {"value": "hello over mTLS"})

    def options(self, who: str = "client", **table: Any) -> VaultOptions:
        return VaultOptions(
            url=self.url,
            auth_method="cert",
            cert=CertAuth(**table) if table else None,
            ca_file=str(self.workdir / "ca.pem"),
            client_cert=str(self.workdir / f"{who}.pem"),
            client_key=str(self.workdir / f"{who}.key"),
            backoff_initial=0.05,
        )


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertVault]:
    configured = CertVault(tmp_path_factory.mktemp("bao-cert"))
    configured.start()
    try:
        yield configured
    finally:
        configured.server.stop()


@pytest.fixture
async def started() -> AsyncIterator[Any]:
    backends: list[VaultBackend] = []

    async def start(options: VaultOptions) -> VaultBackend:
        backend = VaultBackend("vault", options, BackendContext(Metrics(), FakeClock()))
        backends.append(backend)
        await backend.start()
        return backend

    yield start
    for backend in backends:
        await backend.close()


async def test_the_client_certificate_logs_in(vault: CertVault, started: Any) -> None:
    backend = await started(vault.options())  # no table: any role that trusts the certificate
    assert backend.health().ready, backend.health().detail
    assert await backend.fetch(V, "greeting") == "hello over mTLS"
    named = await started(vault.options(name="workers", mount_point="certs-b"))
    assert await named.fetch(V, "greeting") == "hello over mTLS"
    token = named._client.token
    await named.close()  # a token the agent minted is revoked on the way out
    with pytest.raises(RuntimeError, match="403"):
        vault.server.api("GET", "/v1/auth/token/lookup-self", token=token)


async def test_a_certificate_no_role_trusts_is_a_clean_login_failure(
    vault: CertVault, started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = await started(vault.options("stranger"))
    assert not backend.health().ready
    assert backend.health().detail == "backend 'vault': Vault error (InvalidRequest, login)"
    assert "login failed" in caplog.text
    wrong_role = await started(vault.options(name="nobody"))
    assert not wrong_role.health().ready
