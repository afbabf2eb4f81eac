"""At ``[log] level = "debug"`` each backend, against its real upstream, logs no secret value.

The SDKs log response bodies and auth headers at DEBUG; the agent keeps their loggers at
WARNING. Each test runs the agent as a real process, fetches a canary value, and reads the log.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.bao import BaoServer
from support.gcp_server import ACCESS_TOKEN, GrpcSecretManager, Store, TokenEndpoint, tls_material
from support.helpers import (
    agent_process,
    body_of,
    raw_request,
    stop_process,
    wait_for_socket,
    write_config,
)
from support.moto_aws import REGION, MotoServer

pytestmark = pytest.mark.integration

CANARY = "canary-7f3a9c-value"
DEBUG_MARKER = "debug logging is on"


def debug_config(directory: Path, backend: str) -> Path:
    return write_config(
        directory,
        f"""
        [listener]
        socket_path = "{directory}/agent.sock"
        [log]
        level = "debug"
        {backend}
        """,
    )


def lookups_then_log(config: Path, ids: list[str]) -> str:
    """Fetch each variable through the running agent (asserting the canary came back); the log."""
    with agent_process(config) as process:
        sock = str(config.parent / "agent.sock")
        for secret_id in ids:
            answer = raw_request(
                sock, f"GET /v1/variables/{secret_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            assert body_of(answer)["value"] == CANARY
        raw_request(sock, b"GET /v1/variables/absent HTTP/1.1\r\nHost: x\r\n\r\n")
        log = stop_process(process)
    assert DEBUG_MARKER in log  # the agent really ran at debug level
    return log


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    server.reset()
    yield server
    server.stop()


def aws_toml(server: MotoServer, backend_type: str) -> str:
    return f"""
        [[backends]]
        name = "aws"
        type = "{backend_type}"
        endpoint_url = "{server.url}"
        region = "{REGION}"
        max_attempts = 1
    """


def test_aws_secrets_manager_at_debug(moto: MotoServer, short_tmp: Path) -> None:
    moto.put_secret("airflow/variables/canary", CANARY)
    log = lookups_then_log(
        debug_config(short_tmp, aws_toml(moto, "aws_secrets_manager")), ["canary"]
    )
    assert CANARY not in log


def test_aws_ssm_at_debug(moto: MotoServer, short_tmp: Path) -> None:
    moto.put_parameter("/airflow/variables/canary", CANARY, secure=True)
    log = lookups_then_log(debug_config(short_tmp, aws_toml(moto, "aws_ssm")), ["canary"])
    assert CANARY not in log


def _feed_metric(sock: str, result: str) -> float:
    text = raw_request(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").decode()
    pattern = rf'^secrets_agent_feed_events_total{{[^}}]*result="{result}"[^}}]*}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_aws_feed_events_carrying_the_value_at_debug(moto: MotoServer, short_tmp: Path) -> None:
    """CloudTrail's PutSecretValue can hold the SecretString in requestParameters, and a
    hostile or broken message can hold anything: neither reaches the log, /metrics or status."""
    moto.put_secret("airflow/variables/canary", CANARY)
    sqs = moto.client("sqs")
    queue = sqs.create_queue(QueueName="debug-feed")["QueueUrl"]
    feed = f"""
        [backends.feed]
        queue_url = "{queue}"
        endpoint_url = "{moto.url}"
        wait_time = 1
        key_interval = 0
    """
    config = debug_config(short_tmp, aws_toml(moto, "aws_secrets_manager") + feed)
    detail = {
        "eventName": "PutSecretValue",
        "requestParameters": {"secretId": "airflow/variables/canary", "secretString": CANARY},
        "responseElements": {"versionId": "v2"},
    }
    cloudtrail = {
        "source": "aws.secretsmanager",
        "detail-type": "AWS API Call via CloudTrail",
        "time": "2026-01-01T00:00:00Z",
        "detail": detail,
    }
    hostile = [
        "{not json " + CANARY,
        json.dumps({"Type": "Notification", "Message": "[" + CANARY}),
        json.dumps({"source": "aws.secretsmanager", "detail": CANARY}),
        json.dumps({**cloudtrail, "detail": {**detail, "responseElements": CANARY}}),
    ]
    with agent_process(config) as process:
        sock = str(short_tmp / "agent.sock")
        get = b"GET /v1/variables/canary HTTP/1.1\r\nHost: x\r\n\r\n"
        assert body_of(raw_request(sock, get))["value"] == CANARY
        for body in [json.dumps(cloudtrail), *hostile]:
            sqs.send_message(QueueUrl=queue, MessageBody=body)
        deadline = time.monotonic() + 60  # a hang guard, not a timing claim
        while _feed_metric(sock, "malformed") < len(hostile) or _feed_metric(sock, "applied") < 1:
            assert time.monotonic() < deadline, "the feed never took the messages"
            time.sleep(0.05)
        assert body_of(raw_request(sock, get))["value"] == CANARY  # refetched after the event
        metrics = raw_request(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").decode()
        status = raw_request(sock, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n").decode()
        log = stop_process(process)
    assert DEBUG_MARKER in log
    assert CANARY not in log
    assert CANARY not in metrics
    assert CANARY not in status


def test_vault_at_debug(tmp_path: Path, short_tmp: Path) -> None:
    server = BaoServer(tmp_path / "bao")
    server.start()
    try:
        server.kv_put("variables/canary", {"value": CANARY})
        backend = f"""
            [[backends]]
            name = "vault"
            type = "vault"
            url = "{server.url}"
            auth_method = "token"
            [backends.token]
            token = "{server.root_token}"
        """
        log = lookups_then_log(debug_config(short_tmp, backend), ["canary"])
    finally:
        server.stop()
    assert CANARY not in log
    assert server.root_token not in log


def test_gcp_at_debug(tmp_path: Path, short_tmp: Path) -> None:
    key_pem, cert_pem, ca_file = tls_material(tmp_path)
    server = GrpcSecretManager(Store(), key_pem, cert_pem)
    server.start()
    tokens = TokenEndpoint()
    try:
        server.put("airflow-variables-canary", CANARY)
        backend = f"""
            [[backends]]
            name = "gcp"
            type = "gcp_secret_manager"
            credentials_file = "{tokens.key_file(tmp_path)}"
            api_endpoint = "{server.endpoint}"
            ca_file = "{ca_file}"
            retry_deadline = 1
        """
        log = lookups_then_log(debug_config(short_tmp, backend), ["canary"])
    finally:
        server.close()
        tokens.shutdown()
        tokens.server_close()
    assert CANARY not in log
    assert ACCESS_TOKEN not in log


def test_the_canary_check_can_fail(moto: MotoServer, short_tmp: Path) -> None:
    """Without the pin (SDK loggers forced to DEBUG), botocore's body logging shows the canary."""
    moto.put_secret("airflow/variables/canary", CANARY)
    config = debug_config(short_tmp, aws_toml(moto, "aws_secrets_manager"))
    script = (
        "import logging, sys\n"
        "from secrets_agent import cli\n"
        "from secrets_agent.ops import logs\n"
        "logs.PINNED = ()\n"
        "logs.OnlyOursBelowWarning.filter = lambda self, record: True\n"
        "sys.exit(cli.main(['run', '--config', sys.argv[1]]))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(config)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_socket(short_tmp / "agent.sock", process)
        answer = raw_request(
            str(short_tmp / "agent.sock"), b"GET /v1/variables/canary HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert body_of(answer)["value"] == CANARY
        log = stop_process(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)
    assert CANARY in log
