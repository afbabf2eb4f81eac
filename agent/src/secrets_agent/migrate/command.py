"""``secrets-agent migrate``: find Airflow's backend, translate it, write the agent's files.

Writes into ``--output`` (created 0700 if missing): ``agent.toml`` (no secret in it),
``credentials/<name>`` (0600, one secret each, referenced from ``agent.toml``) and
``airflow.env`` (the settings that point Airflow at the agent). Nothing is overwritten; a
secret is never printed. Exit codes: 0 written, 78 (EX_CONFIG) for anything it will not guess.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from secrets_agent.backends.migration import (
    CREDENTIALS_DIR,
    MigrationError,
    Translation,
    translate,
)
from secrets_agent.config.schema import DEFAULT_SOCKET_PATH
from secrets_agent.migrate.airflow_settings import AirflowSettings, FoundBackend
from secrets_agent.migrate.check import check
from secrets_agent.migrate.files import write_all
from secrets_agent.migrate.render import table

EX_CONFIG = 78
CLIENT_CLASS = "secrets_agent_client.AgentSecretsBackend"
TEAM_LAYOUTS = ("vault", "aws_secrets_manager", "aws_ssm", "gcp_secret_manager", "azure_key_vault")


@dataclass(frozen=True)
class Request:
    output: Path
    socket_path: str = DEFAULT_SOCKET_PATH
    section: str | None = None  # "secrets" / "workers"; None: both, which must agree
    airflow_config: Path | None = None
    name: str = ""  # the [[backends]] name; default: its type's


def run(request: Request, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    try:
        _require_absolute_socket(request.socket_path)
        settings = AirflowSettings(env, request.airflow_config)
        found = find_backend(settings, request.section)
        if found.provider_class.strip() == CLIENT_CLASS:
            raise MigrationError(
                f"[{found.section}] already names {CLIENT_CLASS}: Airflow reads through the "
                "agent; run migrate with the provider's backend settings to translate them"
            )
        translation = translate(found.provider_class, found.kwargs)
        if translation.type in TEAM_LAYOUTS:
            _team_layout(translation, _true(settings.get("core", "multi_team")))
        written = write(request, found, translation)
    except MigrationError as exc:
        print(f"secrets-agent migrate: {exc}", file=err)
        return EX_CONFIG
    except (TypeError, ValueError, UnicodeError) as exc:  # a kwarg no TOML value can carry
        print(
            f"secrets-agent migrate: cannot write the config ({type(exc).__name__}); "
            "nothing written",
            file=err,
        )
        return EX_CONFIG
    print(
        f"{found.provider_class} (from [{found.section}]) -> type = {translation.type!r}", file=out
    )
    for path in written:
        print(f"  wrote {path}", file=out)
    if translation.todo:
        print("kwargs to review:", file=out)
        credentials = str(request.output.absolute() / "credentials")
        for kwarg, what in translation.todo:
            print(f"  {kwarg}: {what.replace(CREDENTIALS_DIR, credentials)}", file=out)
    leftover = settings.per_key_variables()
    if leftover:
        print(
            "before Airflow reads airflow.env (Airflow would pass these to the client):", file=out
        )
        for name in leftover:
            print(f"  remove {name}", file=out)
    print(
        f"next: secrets-agent check-config {request.output / 'agent.toml'}; start the agent; "
        f"then give Airflow the settings in {request.output / 'airflow.env'}",
        file=out,
    )
    return 0


def _require_absolute_socket(socket_path: str) -> None:
    """Both sides must name one socket; a relative path would be read from two directories."""
    if not Path(socket_path).is_absolute():
        raise MigrationError(
            f"--socket: {socket_path!r} is relative: the agent would read it from its config's "
            "directory, Airflow from whatever directory each of its processes starts in; "
            "give the absolute path"
        )


def _team_layout(translation: Translation, multi_team: bool) -> None:
    """Team names first, then global, where the provider reads them: with ``[core]
    multi_team`` on and the provider's own switch (Vault's ``use_team_secrets_path``) on."""
    if multi_team and translation.team_paths_unclear:
        raise MigrationError(translation.team_paths_unclear)
    if multi_team and translation.team_paths is not False:
        translation.options["team_layout"] = True
    elif translation.team_paths:
        translation.todo.append(
            (
                "use_team_secrets_path",
                "ignored by the provider while [core] multi_team is off: team_layout stays "
                "off (turn it on with multi_team)",
            )
        )


def _true(raw: str | None) -> bool:
    """Airflow's getboolean (an inline ``# comment`` is not part of the value)."""
    return (raw or "").lower().split("#")[0].strip() in ("t", "true", "1")


def find_backend(settings: AirflowSettings, section: str | None) -> FoundBackend:
    """The one backend to migrate; two different ones (scheduler vs workers) stop the command."""
    if section is not None:
        found = settings.backend(section)
        if found is None:
            raise MigrationError(f"no secrets backend configured for [{section}]")
        return found
    main, workers = settings.backend("secrets"), settings.backend("workers")
    if main is None and workers is None:
        where = settings.cfg_path if settings.cfg_exists else f"{settings.cfg_path} (no such file)"
        raise MigrationError(
            f"no [secrets] backend or [workers] secrets_backend in {where} or in "
            "AIRFLOW__SECRETS__* / AIRFLOW__WORKERS__* variables"
        )
    if (
        main
        and workers
        and (main.provider_class, main.kwargs)
        != (
            workers.provider_class,
            workers.kwargs,
        )
    ):
        raise MigrationError(
            "[secrets] backend and [workers] secrets_backend differ; run once per section "
            "with --section secrets and --section workers, into two --output directories"
        )
    chosen = workers or main
    assert chosen is not None
    return chosen


def write(request: Request, found: FoundBackend, translation: Translation) -> list[Path]:
    """The three outputs, once the agent's loader takes the config, all or none (encoded
    first: a kwarg's lone surrogate stops the command before anything is created)."""
    output = request.output.absolute()
    credentials = output / "credentials"
    options = dict(translation.options)
    for option_path, credential in translation.credentials.items():
        if not option_path[0].startswith("@"):  # "@...": a file the to-do list names
            _place(options, option_path, str(credentials / credential.file_name))
    config = agent_config(request, found, translation.type, options)
    check(config, output, found, translation.origins)
    files = [
        (credentials / c.file_name, c.value.encode(), 0o600)
        for c in translation.credentials.values()
    ]
    files.append((output / "agent.toml", config.encode(), 0o640))
    files.append((output / "airflow.env", airflow_settings(request.socket_path).encode(), 0o644))
    write_all([output, credentials] if translation.credentials else [output], files)
    return [path for path, _, _ in files]


def agent_config(
    request: Request, found: FoundBackend, backend_type: str, options: dict[str, Any]
) -> str:
    """``agent.toml``: the listener and the one ``[[backends]]`` table."""
    name = request.name or backend_type.replace("_", "-")
    backend = {"name": name, "type": backend_type} | options
    return (
        f"# Written by `secrets-agent migrate` from {found.provider_class}\n"
        f"# ([{found.section}] of Airflow). Credentials are in ./credentials, mode 0600.\n\n"
        + table("[listener]", {"socket_path": request.socket_path})
        + "\n"
        + table("[[backends]]", backend)
    )


def _place(options: dict[str, Any], path: tuple[str, ...], item: str) -> None:
    for part in path[:-1]:
        options = options.setdefault(part, {})
    options[path[-1]] = item


def airflow_settings(socket_path: str) -> str:
    """Airflow 3 reads both sections (workers, and scheduler / API server / CLI); Airflow 2
    reads ``[secrets]`` only."""
    kwargs = shlex.quote(json.dumps({"socket_path": socket_path}))
    lines = [
        "# Point Airflow at the agent (environment variables; or the same in airflow.cfg).",
        f"AIRFLOW__SECRETS__BACKEND={CLIENT_CLASS}",
        f"AIRFLOW__SECRETS__BACKEND_KWARGS={kwargs}",
        f"AIRFLOW__WORKERS__SECRETS_BACKEND={CLIENT_CLASS}",
        f"AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS={kwargs}",
        "",
    ]
    return "\n".join(lines)


def main(args: Any) -> int:
    """Entry point from ``cli.py``."""
    import os

    request = Request(
        output=Path(args.output),
        socket_path=args.socket or DEFAULT_SOCKET_PATH,
        section=args.section,
        airflow_config=Path(args.airflow_config) if args.airflow_config else None,
        name=args.name or "",
    )
    return run(request, os.environ, sys.stdout, sys.stderr)
