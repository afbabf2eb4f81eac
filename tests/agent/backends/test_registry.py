"""The backend registry: every type resolves consistently; SDKs load only when configured."""

from __future__ import annotations

import subprocess
import sys

import pytest

from secrets_agent.backends.registry import BACKEND_TYPES, backend_class
from support import ROOT


@pytest.mark.parametrize("name", sorted(BACKEND_TYPES))
def test_every_type_names_its_backend_and_options_consistently(name: str) -> None:
    cls = backend_class(name)
    assert cls.type_name == name
    assert BACKEND_TYPES[name].Options is cls.Options


def test_an_agent_with_embedded_backends_never_imports_a_cloud_sdk() -> None:
    # What `secrets-agent run` imports for config.example.toml (file + env backends).
    code = (
        "import sys\n"
        "from secrets_agent import cli, daemon\n"
        "from secrets_agent.config.loader import load_config\n"
        f"load_config({str(ROOT / 'config.example.toml')!r})\n"
        "sdks = ('hvac', 'aioboto3', 'botocore', 'google.cloud', 'grpc', 'azure', 'redis')\n"
        "print(sorted(m for m in sys.modules if m.startswith(sdks)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
