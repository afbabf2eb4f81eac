"""The source tree as an architecture: modules import on their own, layers point down, the client
imports only the standard library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

SRC = ROOT / "agent" / "src"
CLIENT_SRC = ROOT / "client" / "src"

# Who may import whom at module level (server → lookup → backends; config and ops are used by
# all and use none of those). The top-level modules (cli, daemon, runtime) wire layers together.
ALLOWED = {
    # migrate: Airflow's settings in, files out; it builds on backends and config, never server.
    "migrate": {"migrate", "backends", "config", "kinds", "errors"},
    "server": {"server", "lookup", "backends", "config", "ops", "kinds", "errors"},
    "lookup": {"lookup", "backends", "config", "ops", "kinds", "errors"},
    "backends": {"backends", "config", "ops", "kinds", "errors"},
    "config": {"config", "kinds", "errors"},
    "ops": {"ops", "__init__"},
    "kinds": {"errors"},
    "errors": set(),
}


def modules(root: Path = SRC) -> list[str]:
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] != "__main__":
            names.append(".".join(parts))
    return names


def test_every_module_imports_on_its_own() -> None:
    # One interpreter, our packages dropped from sys.modules before each import: a cycle or a
    # hidden dependency on import order fails here even if the usual order hides it.
    code = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    ours = [m for m in sys.modules if m.split(".")[0] in ("secrets_agent", "secrets_agent_client")]
    for loaded in ours:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""
    names = modules() + modules(CLIENT_SRC)
    assert "secrets_agent.runtime" in names and "secrets_agent_client.transport" in names
    result = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "", result.stdout


@pytest.mark.parametrize("module", [m for m in modules() if m.count(".") >= 1])
def test_layers_import_only_downwards(module: str) -> None:
    layer = module.split(".")[1]
    if layer not in ALLOWED:
        return  # cli, daemon, runtime, __main__: the entry points may use every layer
    path = SRC.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    used = set()
    for node in tree.body:  # module level only: a function-level import is a deliberate seam
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("secrets_agent."):
            used.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.ImportFrom) and node.module == "secrets_agent":
            used.add("__init__")
    assert used <= ALLOWED[layer], f"{module} imports {sorted(used - ALLOWED[layer])}"


def _imported_tops(path: Path) -> set[str]:
    """The top-level packages a file imports anywhere (function-level and TYPE_CHECKING too)."""
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def test_the_client_imports_only_the_standard_library() -> None:
    """It goes into every Airflow environment with no dependencies: anything else breaks there.

    Airflow's own modules, imported inside functions where Airflow runs, are the exception.
    """
    imports = {p: _imported_tops(p) for p in sorted(CLIENT_SRC.rglob("*.py"))}
    assert {"socket", "json", "airflow"} <= set().union(*imports.values())
    allowed = sys.stdlib_module_names | {"secrets_agent_client", "airflow"}
    found = {
        f"{p.relative_to(CLIENT_SRC)}: {t}" for p, tops in imports.items() for t in tops - allowed
    }
    assert found == set()
