"""A real gRPC Secret Manager server, built from the client package's own message types.

No emulator exists, so the suite serves the handful of RPCs the agent and the tests use, with
real status codes, over TLS with a certificate made here, and checks for a bearer token. Plus
the OAuth token endpoint a service-account key file points at, so credentials refresh for real.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import secretmanager_v1
from google.cloud.secretmanager_v1 import types
from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
    SecretManagerServiceGrpcTransport,
)
from google.oauth2 import service_account

from secrets_agent.backends.gcp.options import GcpOptions
from support.tls import self_signed

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"
ACCESS_TOKEN = "test-access-token"
PROJECT = "test-project"
PROJECT_NUMBER = "380529160364"  # what Secret Manager's answers name PROJECT by


def tls_material(directory: Path) -> tuple[bytes, bytes, Path]:
    """A self-signed certificate for 127.0.0.1: (key PEM, cert PEM, path of the cert)."""
    key_pem, cert_pem = self_signed()
    path = directory / "ca.pem"
    path.write_bytes(cert_pem)
    return key_pem, cert_pem, path


@dataclass
class _Version:
    number: int
    data: bytes
    state: int = types.SecretVersion.State.ENABLED


@dataclass
class Store:
    """What the server holds; survives a server restart, like a real service's storage."""

    secrets: dict[str, list[_Version]] = field(default_factory=dict)  # by secret id
    denied: set[str] = field(default_factory=set)  # secret ids this caller may not read
    unavailable: int = 0  # answer this many of the next accesses with UNAVAILABLE
    calls: Counter[str] = field(default_factory=Counter)
    tokens_seen: set[str] = field(default_factory=set)


class SecretManagerServicer:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.store.calls[method] += 1
        auth = dict(context.invocation_metadata()).get("authorization", "")
        self.store.tokens_seen.add(auth)
        if auth != f"Bearer {ACCESS_TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or bad bearer token")

    @staticmethod
    def _secret_id(name: str) -> str:
        return name.split("/")[3]

    async def _versions(self, name: str, context: grpc.aio.ServicerContext) -> list[_Version]:
        versions = self.store.secrets.get(self._secret_id(name))
        if versions is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Secret [{name}] not found")
        return versions  # type: ignore[return-value]

    async def create_secret(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._check("CreateSecret", context)
        if request.secret_id in self.store.secrets:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "Secret already exists")
        self.store.secrets[request.secret_id] = []
        return types.Secret(name=f"{request.parent}/secrets/{request.secret_id}")

    async def add_secret_version(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._check("AddSecretVersion", context)
        versions = await self._versions(request.parent, context)
        versions.append(_Version(len(versions) + 1, request.payload.data))
        return types.SecretVersion(
            name=f"{request.parent}/versions/{len(versions)}",
            state=types.SecretVersion.State.ENABLED,
        )

    async def access_secret_version(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._check("AccessSecretVersion", context)
        if self.store.unavailable > 0:
            self.store.unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        if self._secret_id(request.name) in self.store.denied:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "Permission denied")
        versions = await self._versions(request.name, context)
        wanted = request.name.rsplit("/", 1)[1]
        if not versions:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no versions")
        version = (
            versions[-1]
            if wanted == "latest"
            else next((v for v in versions if str(v.number) == wanted), None)
        )
        if version is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Version [{request.name}] not found")
        assert version is not None
        if version.state != types.SecretVersion.State.ENABLED:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Secret Version [{request.name}] is in DISABLED state.",
            )
        base = request.name.rsplit("/", 1)[0]
        if base.startswith(f"projects/{PROJECT}/"):  # answers name the project by number
            base = f"projects/{PROJECT_NUMBER}/" + base.split("/", 2)[2]
        return types.AccessSecretVersionResponse(
            name=f"{base}/{version.number}", payload=types.SecretPayload(data=version.data)
        )

    async def get_secret(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._check("GetSecret", context)
        await self._versions(request.name, context)
        return types.Secret(name=request.name)

    async def list_secrets(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._check("ListSecrets", context)
        return types.ListSecretsResponse(
            secrets=[
                types.Secret(name=f"{request.parent}/secrets/{s}")
                for s in sorted(self.store.secrets)
            ],
            total_size=len(self.store.secrets),
        )

    async def disable_secret_version(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._check("DisableSecretVersion", context)
        versions = await self._versions(request.name, context)
        number = int(request.name.rsplit("/", 1)[1])
        versions[number - 1].state = types.SecretVersion.State.DISABLED
        return types.SecretVersion(name=request.name, state=types.SecretVersion.State.DISABLED)


_METHODS: dict[str, tuple[str, Any, Any]] = {
    "CreateSecret": ("create_secret", types.CreateSecretRequest, types.Secret),
    "AddSecretVersion": ("add_secret_version", types.AddSecretVersionRequest, types.SecretVersion),
    "AccessSecretVersion": (
        "access_secret_version",
        types.AccessSecretVersionRequest,
        types.AccessSecretVersionResponse,
    ),
    "GetSecret": ("get_secret", types.GetSecretRequest, types.Secret),
    "ListSecrets": ("list_secrets", types.ListSecretsRequest, types.ListSecretsResponse),
    "DisableSecretVersion": (
        "disable_secret_version",
        types.DisableSecretVersionRequest,
        types.SecretVersion,
    ),
}


class ThreadedGrpcServer:
    """A grpc.aio server over TLS in a thread of its own (its own event loop), restartable on
    its port; a subclass names the service and its handlers."""

    service: str

    def __init__(self, key_pem: bytes, cert_pem: bytes, port: int = 0) -> None:
        self.port = port
        self._credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The service's RPCs by name (built on the server's own loop)."""
        raise NotImplementedError

    def start(self) -> None:
        async def start() -> None:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(self.service, self.handlers()),)
            )
            self.port = server.add_secure_port(f"127.0.0.1:{self.port}", self._credentials)
            await server.start()
            self._server = server

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=120)

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            asyncio.run_coroutine_threadsafe(server.stop(0), self._loop).result(timeout=120)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class GrpcSecretManager(ThreadedGrpcServer):
    """Secret Manager's RPCs the agent and the tests use, over one ``Store``."""

    service = SERVICE

    def __init__(self, store: Store, key_pem: bytes, cert_pem: bytes, port: int = 0) -> None:
        super().__init__(key_pem, cert_pem, port)
        self.store = store

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        servicer = SecretManagerServicer(self.store)
        return {
            rpc: grpc.unary_unary_rpc_method_handler(
                getattr(servicer, method),
                request_deserializer=request.deserialize,
                response_serializer=response.serialize,
            )
            for rpc, (method, request, response) in _METHODS.items()
        }

    # -- arranging state, as an operator would with gcloud ------------------------------------

    def put(self, secret_id: str, value: str | bytes) -> None:
        data = value if isinstance(value, bytes) else value.encode()
        self.store.secrets.setdefault(secret_id, []).append(
            _Version(len(self.store.secrets.get(secret_id, [])) + 1, data)
        )

    def disable_latest(self, secret_id: str) -> None:
        self.store.secrets[secret_id][-1].state = types.SecretVersion.State.DISABLED


class TokenEndpoint(ThreadingHTTPServer):
    """The OAuth2 token endpoint a service-account key file names as its ``token_uri``."""

    def __init__(self) -> None:
        self.grants = 0
        self.access_token = ACCESS_TOKEN  # what the next grant hands out
        self.keys = {"k1"}  # the key ids the service account has (a deleted key: refused)
        self.lifetime = 3600  # of the tokens granted (under 225 s: refreshed at every call)
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"

    def key_file(self, directory: Path, project: str = PROJECT, key_id: str = "k1") -> Path:
        """A service-account key whose token exchange happens here, on loopback."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = directory / "service-account.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": project,
                    "private_key_id": key_id,
                    "private_key": pem,
                    "client_email": f"agent@{project}.iam.gserviceaccount.com",
                    "client_id": "1",
                    "token_uri": self.url,
                }
            )
        )
        return path


class _TokenHandler(BaseHTTPRequestHandler):
    server: TokenEndpoint

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        assertion = form.get("assertion", [""])[0].split(".")[0]
        header = json.loads(base64.urlsafe_b64decode(assertion + "=" * (-len(assertion) % 4)))
        if header.get("kid") not in self.server.keys:
            self._reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT"})
            return
        self.server.grants += 1
        body = {
            "access_token": self.server.access_token,
            "expires_in": self.server.lifetime,
            "token_type": "Bearer",
            "issued_at": int(time.time()),
        }
        self._reply(200, body)

    def _reply(self, status: int, answer: dict[str, object]) -> None:
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Gcp:
    """Server, token endpoint, key file, and an operator's client (the real sync client)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        key_pem, cert_pem, self.ca_file = tls_material(workdir)
        self.store = Store()
        self.server = GrpcSecretManager(self.store, key_pem, cert_pem)
        self.server.start()
        self.tokens = TokenEndpoint()
        self.key_file = self.tokens.key_file(workdir)
        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            str(self.key_file), scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        transport = SecretManagerServiceGrpcTransport(
            host=self.server.endpoint,
            credentials=credentials,
            ssl_channel_credentials=grpc.ssl_channel_credentials(cert_pem),
        )
        self.operator = secretmanager_v1.SecretManagerServiceClient(transport=transport)

    def put(self, secret_id: str, value: str) -> None:
        parent = f"projects/{PROJECT}"
        if secret_id not in self.store.secrets:
            self.operator.create_secret(
                parent=parent, secret_id=secret_id, secret=secretmanager_v1.Secret()
            )
        self.operator.add_secret_version(
            parent=f"{parent}/secrets/{secret_id}",
            payload=secretmanager_v1.SecretPayload(data=value.encode()),
        )

    def disable_latest(self, secret_id: str) -> None:
        number = len(self.store.secrets[secret_id])
        self.operator.disable_secret_version(
            name=f"projects/{PROJECT}/secrets/{secret_id}/versions/{number}"
        )

    def options(self, **overrides: Any) -> GcpOptions:
        base: dict[str, Any] = {
            "credentials_file": str(self.key_file),
            "api_endpoint": self.server.endpoint,
            "ca_file": str(self.ca_file),
            "backoff_initial": 0.01,
            "backoff_max": 0.05,
            "retry_deadline": 0.5,
            "timeout": 2.0,
        }
        return GcpOptions(**(base | overrides))

    def close(self) -> None:
        self.operator.transport.close()  # type: ignore[no-untyped-call]
        self.server.close()
        self.tokens.shutdown()
        self.tokens.server_close()
