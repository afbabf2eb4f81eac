"""The README's two set-up commands and the example config stay true to the code."""

from __future__ import annotations

import dataclasses
import re
import typing

from secrets_agent.backends.registry import BACKEND_TYPES
from secrets_agent.config.schema import AgentConfig, BackendCommon
from support import ROOT


def test_readme_setup_has_exactly_the_demo_and_test_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", setup, flags=re.S)
    assert commands == ["./scripts/demo", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n./scripts/test\n" in ci and "\n./scripts/demo\n" in ci


def test_example_config_mentions_every_key() -> None:
    example = (ROOT / "config.example.toml").read_text()
    sections = [f.name for f in dataclasses.fields(AgentConfig) if f.name != "backends"]
    for section in sections:
        assert f"[{section}]" in example
    pending: list[type] = [type(getattr(AgentConfig(), s)) for s in sections]
    pending += [BackendCommon, *[b.Options for b in BACKEND_TYPES.values()]]
    keys: list[str] = []
    while pending:
        cls = pending.pop()
        for name, hint in typing.get_type_hints(cls).items():
            keys.append(name)
            pending += [
                t
                for t in (hint, *typing.get_args(hint))
                if isinstance(t, type) and dataclasses.is_dataclass(t)
            ]
    missing = [
        key for key in keys if not re.search(rf"^#?\s*\[?[\w.]*\b{key}\b", example, flags=re.M)
    ]
    assert missing == []
