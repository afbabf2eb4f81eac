"""The README's two set-up commands and the example config stay true to the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from secrets_agent.backends.registry import BACKEND_TYPES
from secrets_agent.config import AgentConfig, BackendCommon

ROOT = Path(__file__).resolve().parent.parent


def test_readme_setup_has_exactly_the_demo_and_test_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", setup, flags=re.S)
    assert commands == ["./scripts/demo", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n./scripts/test\n" in ci and "\n./scripts/demo\n" in ci


def test_example_config_mentions_every_key() -> None:
    example = (ROOT / "config.example.toml").read_text()
    sections = {f.name: f.type for f in dataclasses.fields(AgentConfig) if f.name != "backends"}
    for section in sections:
        assert f"[{section}]" in example
    keys = [
        f.name
        for cls in (
            *[type(getattr(AgentConfig(), s)) for s in sections],
            BackendCommon,
            *[b.Options for b in BACKEND_TYPES.values()],
        )
        for f in dataclasses.fields(cls)
    ]
    missing = [
        key
        for key in keys
        if not re.search(rf"^#?\s*{key}\b", example, flags=re.M) and key not in example
    ]
    assert missing == []
