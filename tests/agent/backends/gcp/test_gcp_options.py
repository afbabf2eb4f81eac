"""GCP's name checks name the key that holds the bad character."""

from __future__ import annotations

from pathlib import Path

from secrets_agent.config.loader import parse_config
from secrets_agent.errors import ConfigError

BASE = {"name": "gcp", "type": "gcp_secret_manager"}


def problems(**options: str) -> list[str]:
    try:
        parse_config({"backends": [BASE | options]}, Path("/"))
    except ConfigError as exc:
        return exc.problems
    return []


def test_a_bad_sep_is_named_once_as_sep() -> None:
    assert problems(sep="/") == ["backends[0].sep: may only use letters, digits, - and _"]


def test_a_bad_prefix_is_named_alone() -> None:
    assert problems(variables_prefix="airflow.variables") == [
        "backends[0].variables_prefix: may only use letters, digits, - and _"
    ]
    assert problems(sep="/", config_prefix="a.b") == [
        "backends[0].sep: may only use letters, digits, - and _",
        "backends[0].config_prefix: may only use letters, digits, - and _",
    ]


def test_good_names_pass() -> None:
    assert problems(sep="_", connections_prefix="", variables_prefix="a-b_c") == []
