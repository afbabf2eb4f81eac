"""Real Apache Airflow, each version in a virtual environment the test tooling creates.

Dependencies are pinned by lock files (``tests/system/airflow/requirements-<version>.txt``, resolved
with ``uv pip compile``; Airflow's own constraint files are not reachable from here). The
environment is reused while its lock file is unchanged; the client distribution is reinstalled
into it (without dependencies: it has none) on every run. Airflow 2.10 runs on the oldest
Python the client must support that it resolves on; every install compiles bytecode, so no
``airflow`` command recompiles its imports when ``PYTHONDONTWRITEBYTECODE`` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import ROOT
from support.loopback import registry_env

LOCKS = ROOT / "tests" / "system" / "airflow"
DAGS = LOCKS / "dags"
UV = str(Path(sys.executable).parent / "uv")
CLIENT = "secrets_agent_client.AgentSecretsBackend"
PYTHONS = {"2.10.5": "3.10", "3.3.2": "3.11"}


def ensure_venv(version: str) -> Path:
    venv = ROOT / ".airflow" / version
    lock = LOCKS / f"requirements-{version}.txt"
    stamp = venv / ".lock-sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    env = {**registry_env(), "VIRTUAL_ENV": str(venv), "UV_COMPILE_BYTECODE": "1"}
    if not stamp.exists() or stamp.read_text() != digest:
        subprocess.run(
            [UV, "venv", "--quiet", "--clear", "--python", python_for(version), str(venv)],
            check=True,
            timeout=600,
        )
        subprocess.run([UV, "pip", "sync", "--quiet", str(lock)], check=True, env=env, timeout=1800)
        if not (venv / "bin" / "airflow").exists():
            raise RuntimeError(f"uv pip sync did not install Airflow into {venv}")
        stamp.write_text(digest)
    subprocess.run(
        [
            UV,
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--reinstall-package",
            "airflow-secrets-agent-client",
            str(ROOT / "client"),
        ],
        check=True,
        env=env,
        timeout=600,
    )
    return venv


def python_for(version: str) -> str:
    """The interpreter for an Airflow version's venv, found as the suite finds every Python."""
    from support.pythons import interpreter

    return interpreter(PYTHONS[version])


class Airflow:
    """One Airflow version with its own AIRFLOW_HOME and sqlite database."""

    def __init__(self, version: str, home: Path) -> None:
        self.version, self.home = version, home
        self.venv = ensure_venv(version)
        home.mkdir(parents=True, exist_ok=True)
        self.run("db", "migrate", check=True)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        base.update(
            {
                "PATH": f"{self.venv / 'bin'}:{base.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                # No telemetry, no update checks: nothing leaves loopback.
                "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
            }
        )
        base.update(extra or {})
        return base

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        check: bool = False,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.venv / "bin" / "airflow"), *args],
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{result.stderr[-4000:]}")
        return result


def worker_backend(socket_path: str, **kwargs: Any) -> dict[str, str]:
    """Airflow 3's ``[workers] secrets_backend`` with JSON kwargs, as environment variables."""
    return {
        "AIRFLOW__WORKERS__SECRETS_BACKEND": CLIENT,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(
            {"socket_path": socket_path, **kwargs}
        ),
    }


def server_backend(socket_path: str, **kwargs: Any) -> dict[str, str]:
    """``[secrets] backend`` (Airflow 2, and Airflow 3's scheduler/API server/CLI)."""
    return {
        "AIRFLOW__SECRETS__BACKEND": CLIENT,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"socket_path": socket_path, **kwargs}),
    }
