"""Real Apache Airflow, each version in a virtual environment the test tooling creates.

Dependencies are pinned by lock files (``tests/system/airflow/requirements-<version>.txt``, resolved
with ``uv pip compile``; Airflow's own constraint files are not reachable from here). The
environment is reused while its lock file is unchanged; the client distribution is reinstalled
into it (without dependencies: it has none) on every run. Airflow 2.10 runs on the oldest
Python the client must support that it resolves on; every install compiles bytecode, so no
``airflow`` command recompiles its imports when ``PYTHONDONTWRITEBYTECODE`` is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from support import ROOT
from support.loopback import registry_env

LOCKS = ROOT / "tests" / "system" / "airflow"
DAGS = LOCKS / "dags"
UV = str(Path(sys.executable).parent / "uv")
CLIENT = "secrets_agent_client.AgentSecretsBackend"
PYTHONS = {"2.10.5": "3.10", "3.3.2": "3.11", "3.4.0b2": "3.11"}
# Debian's interpreter, outside /root: a task that Airflow re-executes as another user
# (``run_as_user``: ``sudo -u USER sys.executable``) must be able to run it.
SYSTEM_PYTHON = "/usr/bin/python3.11"


class DagsTest(NamedTuple):
    """What ``dags test --use-executor`` left: its status (None: ended by the test) and output."""

    returncode: int | None
    output: str


def ensure_venv(version: str, python: str | None = None) -> Path:
    """The venv for ``version``; ``python`` builds a separate one on that interpreter."""
    venv = ROOT / ".airflow" / (version if python is None else f"{version}-system")
    lock = LOCKS / f"requirements-{version}.txt"
    stamp = venv / ".lock-sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    env = {**registry_env(), "VIRTUAL_ENV": str(venv), "UV_COMPILE_BYTECODE": "1"}
    if not stamp.exists() or stamp.read_text() != digest:
        subprocess.run(
            [
                UV,
                "venv",
                "--quiet",
                "--clear",
                "--python",
                python or python_for(version),
                str(venv),
            ],
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

    def __init__(self, version: str, home: Path, python: str | None = None) -> None:
        self.version, self.home = version, home
        self.venv = ensure_venv(version, python)
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
        # Its own process group, ended whole: an executor's workers outlive a timed-out command.
        with subprocess.Popen(
            [str(self.venv / "bin" / "airflow"), *args],
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.home,
            start_new_session=True,
        ) as process:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
                raise subprocess.TimeoutExpired(process.args, timeout, stdout, stderr) from None
            with contextlib.suppress(ProcessLookupError):  # what the command left running
                os.killpg(process.pid, signal.SIGKILL)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{result.stderr[-4000:]}")
        return result

    def dags_test_with_executor(
        self,
        dag: str,
        env: dict[str, str],
        done: Sequence[Path],
        timeout: float = 300,
        grace: float = 30,
    ) -> DagsTest:
        """``airflow dags test --use-executor DAG`` until it exits or every path in ``done`` exists.

        Airflow 3.3.2's ``LocalExecutor.end()`` can wait forever on an idle worker left without
        its shutdown message, after the run has succeeded (seen on a busy machine). So the
        tasks' own results decide: once they are all written the command has ``grace`` seconds
        to exit by itself, with status 0, or its process group is ended and ``returncode`` is
        None.
        """
        log = self.home / f"dags-test-{dag}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(self.venv / "bin" / "airflow"), "dags", "test", "--use-executor", dag],
                env=self.env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )
        code: int | None = None
        try:
            deadline = time.monotonic() + timeout
            while process.poll() is None and not all(path.exists() for path in done):
                if time.monotonic() > deadline:
                    said = log.read_text(errors="replace")[-6000:]
                    raise AssertionError(f"dags test {dag}: no results in {timeout:.0f} s\n{said}")
                time.sleep(0.5)  # polling for files the task processes write
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(timeout=grace)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the command and all it started
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        output = log.read_text(errors="replace")
        if code is not None and code != 0:
            raise AssertionError(f"dags test {dag} exited {code}:\n{output[-6000:]}")
        return DagsTest(code, output)


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


@contextlib.contextmanager
def execution_api(airflow: Airflow) -> Iterator[dict[str, str]]:
    """Airflow's API server on loopback, for tasks run by an executor; yields their env."""
    from support.bao import free_port

    port = free_port()
    api_env = {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "loopback-test-jwt-secret-0123456789",
    }
    server = subprocess.Popen(
        [
            str(airflow.venv / "bin" / "airflow"),
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=airflow.env(api_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/execution/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the API server did not come up"
                time.sleep(0.5)  # readiness polling
        yield api_env
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the API server and the workers it forked
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=60)
