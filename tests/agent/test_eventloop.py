"""Which event loop the agent runs on: uvloop's by default where installed, else asyncio's."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from secrets_agent.errors import StartupError
from secrets_agent.eventloop import loop_factory


@pytest.mark.parametrize(
    ("choice", "name", "kind"),
    [
        ("auto", "uvloop", uvloop.Loop),
        ("uvloop", "uvloop", uvloop.Loop),
        ("asyncio", "asyncio", asyncio.SelectorEventLoop),
    ],
)
def test_each_choice_makes_its_loop(choice: str, name: str, kind: type) -> None:
    made, factory = loop_factory(choice)
    loop = factory()
    try:
        assert made == name and isinstance(loop, kind)
        assert not (choice == "asyncio" and isinstance(loop, uvloop.Loop))
    finally:
        loop.close()


def test_without_uvloop_auto_falls_back_and_an_explicit_choice_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an interpreter without it sees
    assert loop_factory("auto")[0] == "asyncio"
    with pytest.raises(StartupError, match='"uvloop" but uvloop is not installed'):
        loop_factory("uvloop")
