"""``secrets-agent`` command line."""

# Imports only the standard library (and the stdlib-only client) until a command needs more:
# `get` and `probe` run in exec probes and scripts, where start-up time counts.

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from secrets_agent import __version__
from secrets_agent.exits import (
    CLOSED_STDOUT,
    EX_CONFIG,
    EX_DATAERR,
    EX_PROTOCOL,
    EX_UNAVAILABLE,
    NOT_FOUND,
    for_answer,
)

if TYPE_CHECKING:
    from secrets_agent.config.schema import AgentConfig

_AGENT_MODULES = ("aiohttp", "cachetools", "cryptography", "prometheus_client", "yaml")
_CLIENT_MODULE = "secrets_agent_client"
_DESCRIPTION = (
    "airflow-secrets-agent: a local agent that fetches Apache Airflow's connections, variables "
    "and config from your secrets managers once per node, caches them encrypted, and serves "
    "them to Airflow's processes over a Unix socket."
)
_SEGMENTS = {"connection": "connections", "variable": "variables", "config": "config"}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = _parser().parse_args(argv)
            code: int = args.func(args)
        except ModuleNotFoundError as exc:
            # `get`, `probe`, `status` and --timeout need only the client, which an install with
            # --no-deps leaves out too: the same advice as for the agent's own dependencies.
            if (exc.name or "").split(".")[0] != _CLIENT_MODULE:
                raise
            _say_missing([_CLIENT_MODULE])
            return EX_UNAVAILABLE
        finally:
            sys.stdout.flush()  # a reader that went away shows here, not at the interpreter's exit
    except BrokenPipeError:
        # `secrets-agent status | head -5`: stop quietly, as a process killed by SIGPIPE does.
        # Whatever is still buffered goes nowhere, so the interpreter's own flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return CLOSED_STDOUT
    return code


def _timeout(text: str) -> float:
    """``--timeout``: the client's own check, as a usage error rather than a traceback later."""
    from secrets_agent_client.wire import seconds

    try:
        return seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secrets-agent", description=_DESCRIPTION)
    parser.add_argument(
        "--version", action="version", version=f"airflow-secrets-agent {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", "-c", required=True, help="path to the TOML config")
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    # The path as ``run`` takes it (--config / -c) or plainly, as it always could be given.
    given = check.add_mutually_exclusive_group(required=True)
    given.add_argument("path", nargs="?", help="path to the TOML config")
    given.add_argument("--config", "-c", metavar="PATH", help="the same, as run takes it")
    check.set_defaults(func=_check_config)

    get = sub.add_parser("get", help="ask a running agent for one value and print it")
    get.add_argument("kind", choices=("connection", "variable", "config"))
    get.add_argument("id")
    get.add_argument(
        "--socket", help="agent socket (default: $SECRETS_AGENT_SOCKET or system path)"
    )
    get.add_argument("--timeout", type=_timeout, default=5.0, help="seconds (default: 5)")
    get.add_argument(
        "--refresh",
        action="store_true",
        help="ask the upstream now, not the cache (rate-limited per key by the agent)",
    )
    get.set_defaults(func=_get)

    probe = sub.add_parser("probe", help="exit 0 if a running agent is alive / ready (for probes)")
    probe.add_argument("what", choices=("alive", "ready"))
    probe.add_argument(
        "--socket", help="agent socket (default: $SECRETS_AGENT_SOCKET or system path)"
    )
    probe.add_argument("--timeout", type=_timeout, default=5.0, help="seconds (default: 5)")
    probe.set_defaults(func=_probe)

    migrate = sub.add_parser(
        "migrate", help="write an agent config from Airflow's [secrets] backend settings"
    )
    migrate.add_argument("--output", "-o", required=True, help="directory for the new files")
    migrate.add_argument("--socket", help="the agent's socket (default: the system path)")
    migrate.add_argument("--section", choices=("secrets", "workers"))
    migrate.add_argument("--airflow-config", help="airflow.cfg (default: as Airflow finds it)")
    migrate.add_argument("--name", help="the [[backends]] name (default: from its type)")
    migrate.set_defaults(func=_migrate)

    status = sub.add_parser(
        "status", help="a running agent's health, cache, upstream calls avoided and their cost"
    )
    status.add_argument(
        "--socket", help="agent socket (default: $SECRETS_AGENT_SOCKET or system path)"
    )
    status.add_argument("--timeout", type=_timeout, default=5.0, help="seconds (default: 5)")
    status.add_argument("--json", action="store_true", help="the agent's JSON, for scripts")
    status.set_defaults(
        func=lambda a: importlib.import_module("secrets_agent.report").run(
            _socket_path(a), a.timeout, a.json
        )
    )

    gen = sub.add_parser("gen-key", help="print a new Fernet key for encryption.key_file")
    gen.set_defaults(func=_gen_key)
    return parser


def _require_agent_dependencies() -> bool:
    missing = []
    for module in _AGENT_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        _say_missing(missing)
        return False
    return True


def _say_missing(modules: list[str]) -> None:
    print(
        "secrets-agent: the agent's dependencies are not installed "
        f"(missing: {', '.join(modules)}).\n"
        "Install them with:  pip install airflow-secrets-agent",
        file=sys.stderr,
    )


def _check_config(args: argparse.Namespace) -> int:
    if not _require_agent_dependencies():
        return EX_UNAVAILABLE
    from secrets_agent.config.loader import load_config
    from secrets_agent.errors import ConfigError

    args.path = args.path or args.config  # positional or --config: one of them, argparse says
    try:
        config = load_config(args.path)
    except ConfigError as exc:
        print(f"secrets-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
    problems, unchecked, logged = _check_local_sources(config)
    for problem in problems:
        print(f"secrets-agent: {problem}", file=sys.stderr)
    for line in logged:
        print(f"secrets-agent: warning: {line}", file=sys.stderr)
    if problems:
        return EX_CONFIG
    for what in unchecked:
        print(
            f"secrets-agent: not checked here: {what} (systemd gives it only to the running "
            "service, with LoadCredential=)",
            file=sys.stderr,
        )
    for warning in config.warnings:
        print(f"secrets-agent: warning: {warning}", file=sys.stderr)
    names = ", ".join(f"{b.common.name} ({b.common.type})" for b in config.backends)
    rules = len(config.access)
    access = (
        f"{rules} [[access]] rules"
        if rules
        else "no [[access]] rules (every admitted peer reads every id)"
    )
    print(f"{args.path}: OK; socket {config.listener.socket_path}; backends: {names}; {access}")
    return 0


def _check_local_sources(config: AgentConfig) -> tuple[list[str], list[str], list[str]]:
    """What ``run`` reads from this machine at start (keys, files, the socket's group), with
    the errors it reports; each check on its own, so one problem does not hide the next.
    Also what cannot be read from here: systemd credentials, outside the service; and what
    the checks that passed logged (a file's bad entries: ``run`` serves the rest)."""
    import asyncio
    import functools
    import logging

    from secrets_agent.backends.base import BackendContext
    from secrets_agent.backends.registry import create_backend
    from secrets_agent.errors import AgentError
    from secrets_agent.eventloop import loop_factory
    from secrets_agent.lookup.cipher import load_keys
    from secrets_agent.lookup.shared.build import require_fleet_keys
    from secrets_agent.lookup.snapshot import require_snapshot_keys
    from secrets_agent.server.access import AccessRules
    from secrets_agent.server.listener import check_socket

    # LoadCredential= files (in $CREDENTIALS_DIRECTORY, /run/credentials/<unit>/) exist only
    # while the service runs: from a shell, not being able to read them is no fault of the config.
    in_service = "CREDENTIALS_DIRECTORY" in os.environ
    service_files = [] if in_service else _service_credential_files(config)
    unchecked: list[str] = []

    def keys() -> None:
        encryption = config.encryption
        if encryption.credential and not in_service:
            unchecked.append(f'encryption.credential "{encryption.credential}"')
            encryption = dataclasses.replace(encryption, credential="")
        loaded = load_keys(encryption)
        if not loaded and config.encryption.credential:
            loaded = [b""]  # the credential's keys, read at run time: configured, not random
        require_fleet_keys(config, loaded)
        require_snapshot_keys(config.cache, loaded)

    problems: list[str] = []
    logged: list[logging.LogRecord] = []

    class Collected(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record)

    def attempt(check: Callable[[], object]) -> None:
        seen = len(logged)
        try:
            check()
        except AgentError as exc:
            del logged[seen:]  # the failing check's own log lines say what its error says
            held = [path for path in service_files if path in str(exc)]
            if held:
                unchecked.append(held[0])
            else:
                problems.append(f"cannot start: {exc}")

    # Without a handler, logging's last resort would print the checks' records bare, and a
    # failing check's twice (its log line, then its error): they are this command's lines.
    collected = Collected(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(collected)
    try:
        attempt(keys)
        attempt(lambda: loop_factory(config.listener.event_loop))
        attempt(lambda: check_socket(config.listener))  # as binding does (activation skips it)
        attempt(lambda: AccessRules.from_config(config.access))  # this kernel can enforce them
        if config.shared_cache.enabled:
            from secrets_agent.lookup.shared.clients import check_files

            attempt(lambda: check_files(config.shared_cache))
        for backend_config in config.backends:
            backend = create_backend(backend_config, BackendContext())
            attempt(functools.partial(asyncio.run, backend.check_local()))
    finally:
        root.removeHandler(collected)
    return problems, unchecked, [record.getMessage() for record in logged]


def _service_credential_files(value: object) -> list[str]:
    """Every path in the config under systemd's credentials directory."""
    if isinstance(value, str):
        return [value] if value.startswith("/run/credentials/") else []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return [p for f in fields for p in _service_credential_files(getattr(value, f.name))]
    if isinstance(value, tuple | list):
        return [p for item in value for p in _service_credential_files(item)]
    return []


def _run(args: argparse.Namespace) -> int:
    if not _require_agent_dependencies():
        return EX_UNAVAILABLE
    import asyncio
    import logging

    from secrets_agent.config.loader import load_config
    from secrets_agent.daemon import Agent
    from secrets_agent.errors import ConfigError, StartupError
    from secrets_agent.eventloop import loop_factory
    from secrets_agent.ops.hardening import forbid_core_dumps
    from secrets_agent.ops.logs import configure_logging
    from secrets_agent.ops.systemd import Notifier, inherited_socket

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"secrets-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
    configure_logging(config.log.level, config.log.format)
    for warning in config.warnings:
        logging.getLogger("secrets_agent").warning("config: %s", warning)
    forbid_core_dumps()
    agent = Agent(
        config,
        config_path=args.config,
        inherited=inherited_socket(),  # socket activation: systemd owns the socket
        notifier=Notifier(),
    )
    try:
        name, factory = loop_factory(config.listener.event_loop)
        logging.getLogger("secrets_agent").debug("event loop: %s", name)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(agent.run())
    except StartupError as exc:
        logging.getLogger("secrets_agent").error("cannot start: %s", exc)
        return EX_CONFIG
    return 0


def _get(args: argparse.Namespace) -> int:
    """Print the value; otherwise say what the agent answered, each case its own exit status."""
    from secrets_agent_client.transport import AgentUnreachable, UnixTransport
    from secrets_agent_client.wire import error_detail, lookup_path

    path = lookup_path(_SEGMENTS[args.kind], args.id, None, args.refresh)
    if path is None:  # not text UTF-8 can carry (a lone surrogate): what the agent's 400 says
        print(f"secrets-agent: {args.kind} id is not valid UTF-8 text", file=sys.stderr)
        return EX_DATAERR
    try:
        response = UnixTransport(_socket_path(args), args.timeout).request("GET", path)
    except AgentUnreachable as exc:
        print(f"secrets-agent: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    if response.status == 404:
        print(f"secrets-agent: {args.kind} {json.dumps(args.id)} not found", file=sys.stderr)
        return NOT_FOUND
    value = _value(response.body) if response.status == 200 else None
    if value is None:
        print(
            f"secrets-agent: the agent answered {response.status}: {error_detail(response)}",
            file=sys.stderr,
        )
        return for_answer(response.status)
    print(value)
    return 0


def _value(body: bytes) -> str | None:
    value = _field(body, "value")
    return value if isinstance(value, str) else None


def _socket_path(args: argparse.Namespace) -> str:
    from secrets_agent_client import DEFAULT_SOCKET_PATH

    path: str = args.socket or os.environ.get("SECRETS_AGENT_SOCKET") or DEFAULT_SOCKET_PATH
    return path


def _probe(args: argparse.Namespace) -> int:
    """For Kubernetes exec probes and scripts: stdlib only, like the client."""
    from secrets_agent_client.transport import AgentUnreachable, UnixTransport
    from secrets_agent_client.wire import error_detail

    path = _socket_path(args)
    try:
        response = UnixTransport(path, args.timeout).request(
            "GET", "/healthz" if args.what == "alive" else "/readyz"
        )
    except AgentUnreachable as exc:
        print(f"secrets-agent: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    if response.status == 403:  # this caller may not ask: says nothing of the agent's state
        print(f"secrets-agent: the agent answered 403: {error_detail(response)}", file=sys.stderr)
        return for_answer(response.status)
    if response.status != 200:
        detail = response.body.decode(errors="replace")
        print(f"secrets-agent: not {args.what}: {detail}", file=sys.stderr)
        return NOT_FOUND
    if args.what == "ready":
        backends = _field(response.body, "backends")
        if backends is None:  # something else listens there, or an agent this command predates
            print(
                f"secrets-agent: the answer from {path} is not an agent's /readyz", file=sys.stderr
            )
            return EX_PROTOCOL
        print(json.dumps(backends))
    return 0


def _field(body: bytes, name: str) -> object:
    try:
        value: object = json.loads(body)[name]
    except (ValueError, KeyError, TypeError):
        return None
    return value


def _migrate(args: argparse.Namespace) -> int:
    if not _require_agent_dependencies():
        return EX_UNAVAILABLE
    from secrets_agent.migrate.command import main as migrate

    return migrate(args)


def _gen_key(args: argparse.Namespace) -> int:
    if not _require_agent_dependencies():
        return EX_UNAVAILABLE
    from secrets_agent.lookup.cipher import generate_key

    print(generate_key())
    return 0


if __name__ == "__main__":
    sys.exit(main())
