"""A loopback Azure Key Vault and Entra ID token endpoint, over TLS, speaking what the SDK calls.

No emulator exists for Key Vault, so the suite serves its REST API for secrets: the first
request without a token gets ``401`` with the ``WWW-Authenticate`` challenge, then
``GET /secrets/{name}/{version}?api-version=...`` answers with a secret bundle or a Key Vault
error body (404 ``SecretNotFound``, 403 ``Forbidden``/``SecretDisabled``, 429 + ``Retry-After``).
Bearer tokens are only accepted if the token endpoint issued them, and the token endpoint only
issues them for the service principal's client id and secret.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import secrets
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from support.tls import self_signed

TENANT = "test-tenant"
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-client-s3cret-canary"
RESOURCE = "https://vault.azure.net"
STORAGE_SCOPE = "https://storage.azure.com/.default"
ISSUER = f"https://sts.windows.net/{TENANT}/"  # Entra's v1 issuer, as Storage expects


@dataclass
class _Version:
    version: str
    value: str
    enabled: bool = True


@dataclass
class Store:
    """What the vault holds; survives a server restart, like the real service's storage."""

    secrets: dict[str, list[_Version]] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)  # names this principal may not read
    throttle: int = 0  # answer this many of the next reads with 429
    calls: Counter[str] = field(default_factory=Counter)  # secret name → GETs that reached it
    issued: set[str] = field(default_factory=set)  # tokens the token endpoint handed out
    tokens_seen: set[str] = field(default_factory=set)
    api_versions: set[str] = field(default_factory=set)
    grants: int = 0
    scopes: Counter[str] = field(default_factory=Counter)  # scope → tokens granted for it
    audiences: dict[str, str] = field(default_factory=dict)  # scope → a wrong "aud" to issue
    refused: set[str] = field(default_factory=set)  # scopes Entra will not issue tokens for
    client_secret: str = CLIENT_SECRET  # the service principal's secret Entra accepts now
    lifetime: int = 3600  # of the tokens issued (0: a client asks at each request)
    _ids: Any = field(default_factory=itertools.count)

    def put(self, name: str, value: str) -> str:
        version = f"v{next(self._ids):032d}"
        self.secrets.setdefault(name, []).append(_Version(version, value))
        return version

    def disable_latest(self, name: str) -> None:
        self.secrets[name][-1].enabled = False


class _TlsServer(ThreadingHTTPServer):
    """A threaded HTTPS server on 127.0.0.1 that can stop and start again on its port."""

    daemon_threads = True
    handler: type[BaseHTTPRequestHandler]

    def __init__(self, store: Store, context: ssl.SSLContext, port: int = 0) -> None:
        self.store, self.context = store, context
        self.connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        super().__init__(("127.0.0.1", port), self.handler)
        self.port = self.server_address[1]
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop listening and cut every open connection, as a killed server would."""
        self.shutdown()
        self.server_close()
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Azure's front ends do
    server: Any

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def reply(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _error(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return {"error": error}


class _VaultHandler(_Handler):
    server: KeyVaultServer

    def do_GET(self) -> None:
        store = self.server.store
        url = urlsplit(self.path)
        store.api_versions.update(parse_qs(url.query).get("api-version", []))
        parts = url.path.strip("/").split("/")
        auth = self.headers.get("Authorization", "")
        if auth:
            store.tokens_seen.add(auth)
        if not auth.startswith("Bearer ") or auth[7:] not in store.issued:
            challenge = (
                f'Bearer authorization="{self.server.authority}/{TENANT}", resource="{RESOURCE}"'
            )
            self.reply(
                401,
                _error("Unauthorized", "AKV10000: Request is missing a Bearer token."),
                {"WWW-Authenticate": challenge},
            )
            return
        if len(parts) not in (2, 3) or parts[0] != "secrets":
            self.reply(400, _error("BadParameter", "unknown operation"))
            return
        name, wanted = parts[1], (parts[2] if len(parts) == 3 else "")
        store.calls[name] += 1
        if store.throttle > 0:
            store.throttle -= 1
            self.reply(429, _error("Throttled", "Too many requests."), {"Retry-After": "0"})
            return
        if name in store.denied:
            self.reply(403, _error("Forbidden", "Caller is not authorized.", "ForbiddenByRbac"))
            return
        # Key Vault's names ignore case: "DB-PASSWORD" reads the secret created as "db-password".
        same = [stored for stored in store.secrets if stored.lower() == name.lower()]
        versions = store.secrets[same[0]] if same else []
        version = next((v for v in reversed(versions) if v.version == wanted or not wanted), None)
        if version is None:
            self.reply(
                404, _error("SecretNotFound", f"A secret with (name/id) {name} was not found")
            )
            return
        if not version.enabled:
            self.reply(
                403,
                _error(
                    "Forbidden",
                    "Operation get is not allowed on a disabled secret.",
                    "SecretDisabled",
                ),
            )
            return
        base = f"{self.server.url}/secrets/{name}/{version.version}"
        attributes = {"enabled": True, "created": 1700000000, "updated": 1700000000}
        self.reply(200, {"value": version.value, "id": base, "attributes": attributes})


class _TokenHandler(_Handler):
    server: TokenServer

    def do_GET(self) -> None:
        # The OIDC discovery document MSAL (the sync credentials) asks for first.
        base = f"{self.server.url}/{TENANT}"
        self.reply(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
            },
        )

    def do_POST(self) -> None:
        store = self.server.store
        length = int(self.headers.get("Content-Length", 0))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if self.path.split("?")[0] != f"/{TENANT}/oauth2/v2.0/token":
            self.reply(404, {"error": "invalid_request", "error_description": "no such tenant"})
            return
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != CLIENT_ID
            or form.get("client_secret") != store.client_secret
        ):
            self.reply(401, {"error": "invalid_client", "error_description": "AADSTS7000215"})
            return
        scope = form.get("scope", "")
        if scope in store.refused:
            # Entra's answer for a resource the tenant has no service principal for.
            self.reply(400, {"error": "invalid_resource", "error_description": "AADSTS500011"})
            return
        store.grants += 1
        store.scopes[scope] += 1
        audience = store.audiences.get(scope, scope.removesuffix("/.default"))
        token = _jwt(audience, store.lifetime)
        store.issued.add(token)
        answer = {"token_type": "Bearer", "expires_in": store.lifetime, "access_token": token}
        self.reply(200, answer)


def _jwt(audience: str, lifetime: int) -> str:
    """A JWT-shaped access token as Entra issues: Azurite's ``--oauth basic`` checks its
    audience, issuer and lifetime, not its signature (the signature here is random bytes)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": ISSUER,
        "iat": now,
        "nbf": now - 60,
        "exp": now + lifetime,
        "tid": TENANT,
        "appid": CLIENT_ID,
        "jti": secrets.token_hex(8),
    }
    header = json.dumps({"alg": "RS256", "typ": "JWT"}).encode()
    return ".".join((part(header), part(json.dumps(claims).encode()), part(os.urandom(32))))


class KeyVaultServer(_TlsServer):
    handler = _VaultHandler

    def __init__(self, store: Store, context: ssl.SSLContext, authority: str, port: int = 0):
        self.authority = authority
        super().__init__(store, context, port)


class TokenServer(_TlsServer):
    handler = _TokenHandler


class Azure:
    """A vault, its token endpoint, their CA, and the service principal's secret file."""

    def __init__(self, workdir: Path, tls: tuple[bytes, bytes] | None = None) -> None:
        key_pem, cert_pem = tls or self_signed()  # tls: shared with another loopback server
        (workdir / "azure-key.pem").write_bytes(key_pem)
        self.ca_file = workdir / "azure-ca.pem"
        self.ca_file.write_bytes(cert_pem)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(self.ca_file, workdir / "azure-key.pem")
        self.secret_file = workdir / "client-secret"
        self.secret_file.write_text(CLIENT_SECRET + "\n")
        self.store = Store()
        self.tokens = TokenServer(self.store, self.context)
        self.vault = KeyVaultServer(self.store, self.context, self.tokens.url)

    def options(self) -> dict[str, Any]:
        """The backend's options for this vault (loopback needs the last four)."""
        return {
            "vault_url": self.vault.url,
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "client_secret_file": str(self.secret_file),
            "authority_host": self.tokens.url,
            "ca_file": str(self.ca_file),
            "disable_instance_discovery": True,
            "verify_challenge_resource": False,
        }

    def stop_vault(self) -> None:
        self.vault.close()

    def start_vault(self) -> None:
        """Start the vault again on the same port, with the same storage."""
        self.vault = KeyVaultServer(self.store, self.context, self.tokens.url, self.vault.port)

    def close(self) -> None:
        self.vault.close()
        self.tokens.close()
