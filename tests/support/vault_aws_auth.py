"""Vault's aws auth method (iam type) in front of OpenBao, whose build has no aws plugin.

Every other request goes on to OpenBao. A login is checked as Vault's plugin checks one
(builtin/credential/aws, ``pathLoginUpdate`` for the iam type): the signed request must be a
POST of ``GetCallerIdentity`` to STS's global endpoint, signed over the mount's server-id header
when the mount requires one; STS — moto's server, which checks the signature and the key — says
whose request it is; that ARN (an assumed role's session resolved to its role) must be the one
the role is bound to. OpenBao then mints the token, with the role's policies. The signing region
must be the mount's ``sts_region``, as STS would insist.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support.bao import BaoServer

STS_URL = "https://sts.amazonaws.com/"  # what hvac signs, and Vault's default STS endpoint
_ASSUMED = re.compile(r"arn:aws:sts::(\d+):assumed-role/([^/]+)/.+")


@dataclass(frozen=True)
class Role:
    bound_arn: str
    policies: tuple[str, ...]
    ttl: str = "60s"


class AwsAuthVault(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bao: BaoServer, sts_url: str, mount: str = "aws") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bao, self.sts_url, self.mount = bao, sts_url, mount
        self.roles: dict[str, Role] = {}
        self.header_value = ""  # iam_server_id_header_value: "" requires none
        # The mount's sts_region: STS takes only a request signed for its own region (the
        # global endpoint's is us-east-1), so a request signed for another is refused.
        self.sts_region = "us-east-1"
        self.logins = 0
        self.seen_regions: list[str] = []  # each signed request's credential scope region
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def login(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Vault's answer to an iam login: (status, JSON)."""
        if body.get("iam_http_request_method") != "POST":
            return 400, _errors("iam_http_request_method must be POST")
        url = _b64(body.get("iam_request_url"))
        headers = json.loads(_b64(body.get("iam_request_headers")) or "{}")
        payload = _b64(body.get("iam_request_body"))
        if url != STS_URL or "Action=GetCallerIdentity" not in payload:
            return 400, _errors("not a GetCallerIdentity request to STS")
        flat = {name: values[0] for name, values in headers.items()}
        authorization = flat.get("Authorization", "")
        signed = re.search(r"SignedHeaders=([^,]+)", authorization)
        if self.header_value and (
            flat.get("X-Vault-AWS-IAM-Server-ID") != self.header_value
            or signed is None
            or "x-vault-aws-iam-server-id" not in signed[1].split(";")
        ):
            return 400, _errors("missing or invalid X-Vault-AWS-IAM-Server-ID header")
        scope = re.search(r"Credential=[^/]+/\d+/([^/]+)/sts/", authorization)
        region = scope[1] if scope else ""
        with self._lock:
            self.seen_regions.append(region)
        if region != self.sts_region:
            return 400, _errors("error making upstream request: SignatureDoesNotMatch")
        arn = self._caller(flat, payload)
        if arn is None:
            return 400, _errors("error making upstream request: STS refused the request")
        if match := _ASSUMED.fullmatch(arn):
            arn = f"arn:aws:iam::{match[1]}:role/{match[2]}"
        name = body.get("role") or arn.rsplit("/", 1)[-1]
        role = self.roles.get(name)
        if role is None:
            return 400, _errors(f"entry for role {name} not found")
        if arn != role.bound_arn:
            return 400, _errors(f"IAM Principal {arn} does not belong to the role {name}")
        minted = self.bao.api(
            "POST",
            "/v1/auth/token/create",
            {"policies": list(role.policies), "ttl": role.ttl, "renewable": True},
        )
        with self._lock:
            self.logins += 1
        return 200, minted

    def _caller(self, headers: dict[str, str], payload: str) -> str | None:
        request = urllib.request.Request(
            self.sts_url + "/", data=payload.encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                xml = answer.read().decode()
        except urllib.error.HTTPError as exc:
            exc.close()
            return None
        found = re.search(r"<Arn>([^<]+)</Arn>", xml)
        return found[1] if found else None


class _Handler(BaseHTTPRequestHandler):
    server: AwsAuthVault

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        if self.path == f"/v1/auth/{self.server.mount}/login":
            body = json.loads(self._body() or b"{}")
            status, answer = self.server.login(body)
            self._answer(status, json.dumps(answer).encode())
        else:
            self._forward()

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        data = self._body() if self.command in ("POST", "PUT") else None
        headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-vault")}
        request = urllib.request.Request(
            self.server.bao.url + self.path, data=data, headers=headers, method=self.command
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                self._answer(answer.status, answer.read())
        except urllib.error.HTTPError as exc:
            self._answer(exc.code, exc.read())
            exc.close()

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _b64(value: Any) -> str:
    return base64.b64decode(value).decode() if isinstance(value, str) else ""


def _errors(text: str) -> dict[str, Any]:
    return {"errors": [text]}
