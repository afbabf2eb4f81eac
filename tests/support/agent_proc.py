"""The real agent as a process for the client's tests, which also run on Python 3.9 (where the
agent cannot be imported): started from the repository's own environment, never imported."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from support import ROOT

AGENT = ROOT / ".venv" / "bin" / "secrets-agent"

VARIABLES = {"greeting": "hello", "a/b c": "slashed", "team/ok": "team-value"}
CONNECTIONS = {
    "pg": "postgresql://user:s3cret-pg@db.local:5432/app",
    "aws/prod/db": "mysql://u:s3cret-my@h:3306/s",
}


@contextlib.contextmanager
def real_agent(directory: Path, listener: str = "") -> Iterator[str]:
    """``secrets-agent run`` serving ``VARIABLES`` and ``CONNECTIONS`` from files; the socket."""
    if not AGENT.exists():
        import pytest

        pytest.skip(f"no agent at {AGENT} (run `uv sync` in the repository)")
    (directory / "variables.json").write_text(json.dumps(VARIABLES))
    (directory / "connections.json").write_text(json.dumps(CONNECTIONS))
    path = directory / "agent.sock"
    config = directory / "agent.toml"
    config.write_text(
        f'[listener]\nsocket_path = "{path}"\n{textwrap.dedent(listener)}\n'
        '[[backends]]\nname = "files"\ntype = "file"\n'
        f'variables_file = "{directory}/variables.json"\n'
        f'connections_file = "{directory}/connections.json"\n'
    )
    process = subprocess.Popen(
        [str(AGENT), "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
    )
    try:
        _wait_listening(path, process)
        yield str(path)
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=60)


def _wait_listening(path: Path, process: subprocess.Popen[str], seconds: float = 120) -> None:
    """Poll (a readiness wait, not a timing assertion) until the agent accepts on its socket."""
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        if process.poll() is not None:
            raise AssertionError(f"agent exited early: {process.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"agent did not listen on {path} within {seconds} s")
        time.sleep(0.02)
