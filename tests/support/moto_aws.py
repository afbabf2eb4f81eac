"""moto's server on loopback, and boto3 clients to arrange state in it as an operator would."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class MotoServer:
    def __init__(self, port: int = 0) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.port = port
        self.running = False

    def start(self) -> None:
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._server.stop()
            self.running = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def secrets_manager_toml(self, extra: str = "") -> str:
        """A ``[[backends]]`` table named "sm" reading this server, one attempt per call."""
        return f"""
            [[backends]]
            name = "sm"
            type = "aws_secrets_manager"
            endpoint_url = "{self.url}"
            region = "{REGION}"
            max_attempts = 1
            {extra}
        """

    def reset(self) -> None:
        self._post("/moto-api/reset", b"")

    @contextlib.contextmanager
    def enforcing_auth(self) -> Iterator[None]:
        """moto checks each request's signature and IAM policy (by default it takes any key)."""
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")

    def access_key(self, user: str, actions: list[str]) -> tuple[str, str]:
        """A new IAM user allowed ``actions`` on every resource, and its access key."""
        iam = self.client("iam")
        iam.create_user(UserName=user)
        statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
        document = {"Version": "2012-10-17", "Statement": [statement]}
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def _post(self, path: str, data: bytes) -> None:
        request = urllib.request.Request(
            self.url + path, method="POST", data=data, headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, **FAKE_CREDENTIALS)

    def put_secret(self, name: str, value: str | dict[str, Any]) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        version: str = self.client("secretsmanager").create_secret(Name=name, SecretString=text)[
            "VersionId"
        ]
        return version

    def put_parameter(self, name: str, value: str, secure: bool = False) -> None:
        self.client("ssm").put_parameter(
            Name=name, Value=value, Overwrite=True, Type="SecureString" if secure else "String"
        )
