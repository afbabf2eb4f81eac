"""The [pricing] table: the managers' list prices by default, overridable, never negative."""

from __future__ import annotations

from pathlib import Path

import pytest

from secrets_agent.config.loader import load_config
from secrets_agent.errors import ConfigError
from support.helpers import write_config

BACKENDS = """
    [[backends]]
    name = "ssm-prod"
    type = "aws_ssm"
    [[backends]]
    name = "sm"
    type = "aws_secrets_manager"
"""


def problems(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, body))
    return info.value.problems


def test_defaults_are_the_published_prices_of_2026_12_04(tmp_path: Path) -> None:
    pricing = load_config(write_config(tmp_path, "")).pricing
    assert pricing.taken == "2026-12-04"
    per_10k = {
        kind: pricing.per_call("x", kind) * 10_000
        for kind in (
            "aws_secrets_manager",
            "aws_ssm",
            "gcp_secret_manager",
            "azure_key_vault",
            "vault",
            "file",
            "env",
        )
    }
    assert per_10k == pytest.approx(
        {
            "aws_secrets_manager": 0.05,
            "aws_ssm": 0.0,
            "gcp_secret_manager": 0.03,
            "azure_key_vault": 0.03,
            "vault": 0.0,
            "file": 0.0,
            "env": 0.0,
        }
    )


def test_a_backend_can_be_priced_at_another_row_and_rows_overridden(tmp_path: Path) -> None:
    body = """
        [pricing]
        taken = "2027-03-01"
        aws_secrets_manager = 0.04
        backends = { ssm-prod = "aws_ssm_higher_throughput" }
    """
    pricing = load_config(write_config(tmp_path, body + BACKENDS)).pricing
    assert pricing.per_call("ssm-prod", "aws_ssm") * 10_000 == pytest.approx(0.05)
    assert pricing.per_call("sm", "aws_secrets_manager") * 10_000 == pytest.approx(0.04)
    assert pricing.taken == "2027-03-01"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("gcp_secret_manager = -0.03", "pricing.gcp_secret_manager: must be >= 0.0, got -0.03"),
        ('taken = "last week"', "pricing.taken: must be a date such as 2026-12-04"),
        ('vault = "free"', "pricing.vault: must be a number, not a string"),
        ("colour = 1", "pricing.colour: unknown key"),
        (
            'backends = { sm = "aws_ssm_cheap" }',
            "pricing.backends.sm: must name a price row (aws_secrets_manager, aws_ssm, "
            "aws_ssm_higher_throughput, gcp_secret_manager, azure_key_vault, vault)",
        ),
        (
            'backends = { nobody = "vault" }',
            "pricing.backends.nobody: no backend has this name",
        ),
    ],
)
def test_bad_prices_are_refused_with_the_key(tmp_path: Path, body: str, expected: str) -> None:
    assert problems(tmp_path, "[pricing]\n" + body + "\n" + BACKENDS) == [expected]
