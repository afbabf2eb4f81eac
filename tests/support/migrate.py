"""``secrets-agent migrate`` run in the test's process, on an environment of its own."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from secrets_agent.migrate.command import Request, run


def migrate_here(
    tmp_path: Path,
    provider: str | None = None,
    kwargs: dict[str, Any] | None = None,
    section: str = "secrets",
    env: dict[str, str] | None = None,
    **request: Any,
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) for ``provider`` with ``kwargs`` set in ``[section]``'s
    variables; ``$AIRFLOW_HOME`` is ``tmp_path/airflow`` (no airflow.cfg unless a test writes
    one); the output is ``tmp_path/out``."""
    variables = {"AIRFLOW_HOME": str(tmp_path / "airflow")} | (env or {})
    if provider is not None:
        prefix = {"secrets": "AIRFLOW__SECRETS__BACKEND"}.get(
            section, "AIRFLOW__WORKERS__SECRETS_BACKEND"
        )
        variables |= {prefix: provider, f"{prefix}_KWARGS": json.dumps(kwargs or {})}
    out, err = io.StringIO(), io.StringIO()
    request = {"socket_path": "/run/agent.sock"} | request
    code = run(Request(output=tmp_path / "out", **request), variables, out, err)
    return code, out.getvalue(), err.getvalue()
