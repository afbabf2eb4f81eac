"""Every backend's URL and endpoint option is checked when the config loads: a malformed one
is a config error naming its key (exit 78), never a traceback or a start that retries forever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from secrets_agent import cli
from secrets_agent.config.loader import parse_config
from secrets_agent.errors import ConfigError
from support.helpers import write_config

VAULT = {"name": "b", "type": "vault", "url": "https://vault.local:8200"}
AZURE = {"name": "b", "type": "azure_key_vault", "vault_url": "https://v.vault.azure.net"}
AWS = {"name": "b", "type": "aws_secrets_manager"}
GCP = {"name": "b", "type": "gcp_secret_manager"}
AWS_FEED = {"queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q"}
AZURE_FEED = {"queue_url": "https://a.queue.core.windows.net/q"}

# (the backend table with one bad value, the key its error names)
CASES: list[tuple[dict[str, Any], str]] = [
    (VAULT | {"url": "http://[bad"}, "url"),
    (VAULT | {"url": "http://"}, "url"),
    (VAULT | {"url": "http://vault:99999"}, "url"),
    (VAULT | {"url": "http://va ult:8200"}, "url"),
    (
        VAULT | {"auth_method": "aws_iam", "aws_iam": {"sts_endpoint_url": "https://[sts"}},
        "aws_iam.sts_endpoint_url",
    ),
    (AWS | {"endpoint_url": "http://[bad"}, "endpoint_url"),
    (AWS | {"sts_endpoint_url": "https://sts:0"}, "sts_endpoint_url"),
    ({**AWS, "type": "aws_ssm", "endpoint_url": "http://"}, "endpoint_url"),
    (AWS | {"feed": {"queue_url": "https://[q"}}, "feed.queue_url"),
    (AWS | {"feed": AWS_FEED | {"endpoint_url": "http://sqs:99999"}}, "feed.endpoint_url"),
    (AZURE | {"vault_url": "https://[bad"}, "vault_url"),
    (AZURE | {"vault_url": "https://"}, "vault_url"),
    (AZURE | {"authority_host": "https://[login"}, "authority_host"),
    (AZURE | {"authority_host": "http://login.example"}, "authority_host"),
    (AZURE | {"feed": {"queue_url": "https://[q"}}, "feed.queue_url"),
    (AZURE | {"feed": AZURE_FEED | {"queue_url": "https://a b/q"}}, "feed.queue_url"),
    (GCP | {"api_endpoint": "https://secretmanager.googleapis.com"}, "api_endpoint"),
    (GCP | {"api_endpoint": "host:99999"}, "api_endpoint"),
    (GCP | {"feed": {"subscription": "s", "api_endpoint": "[bad:1"}}, "feed.api_endpoint"),
]


@pytest.mark.parametrize(("table", "key"), CASES, ids=[f"{t['type']}.{k}" for t, k in CASES])
def test_a_malformed_url_is_a_config_error_naming_its_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"backends": [table]}, Path("/"))
    assert any(p.startswith(f"backends[0].{key}: ") for p in info.value.problems), (
        info.value.problems
    )


def test_good_urls_load() -> None:
    tables = [
        VAULT | {"name": "v", "url": "http://127.0.0.1:8200"},
        AZURE | {"name": "az", "authority_host": "https://127.0.0.1:4443", "feed": AZURE_FEED},
        AWS | {"name": "aws", "endpoint_url": "http://127.0.0.1:5000", "feed": AWS_FEED},
        GCP | {"name": "gcp", "api_endpoint": "127.0.0.1:8443"},
    ]
    assert len(parse_config({"backends": tables}, Path("/")).backends) == 4


@pytest.mark.parametrize(
    "body",
    [
        'type = "azure_key_vault"\nvault_url = "https://[bad"',
        'type = "vault"\nurl = "http://[bad"',
    ],
)
def test_check_config_refuses_without_a_traceback(
    tmp_path: Path, body: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, f'[[backends]]\nname = "b"\n{body}\n')
    assert cli.main(["check-config", str(path)]) == 78
    err = capsys.readouterr().err
    assert "backends[0]." in err and "is not a valid URL" in err
    assert "Traceback" not in err
