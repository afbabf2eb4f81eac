"""Find CPython interpreters by minor version: pyenv's installs first, then real binaries on PATH.

uv's own discovery trips over pyenv's shims, so an interpreter is always named by its path.
A missing interpreter is an error with the fix in it, never a skip: the client's promise to
run on every Python Airflow uses is only kept if every one of them is tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CLIENT_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")


class MissingInterpreter(RuntimeError):
    pass


def interpreter(minor: str) -> str:
    for candidate in _candidates(minor):
        if _reports(candidate, minor):
            return candidate
    raise MissingInterpreter(
        f"Python {minor} was not found (looked in $PYENV_ROOT/versions and PATH); "
        f"install it, e.g. `pyenv install {minor}`, and run the tests again"
    )


def _candidates(minor: str) -> list[str]:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob(f"{minor}.*/bin/python{minor}"), reverse=True)
    on_path = shutil.which(f"python{minor}")
    if on_path and "/shims/" not in on_path:
        found.append(Path(on_path))
    return [str(p) for p in found]


def _reports(path: str, minor: str) -> bool:
    try:
        out = subprocess.run(
            [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() == minor
