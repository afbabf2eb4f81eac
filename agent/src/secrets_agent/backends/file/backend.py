"""Backend reading Airflow's LocalFilesystemBackend files, re-read whenever a file changes."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secrets_agent.backends.base import Backend, BackendContext, Health
from secrets_agent.backends.connection_uri import uri_fields
from secrets_agent.backends.connections import ConnectionFormatError, connection_value, to_json
from secrets_agent.backends.file.formats import SUFFIXES, FileFormatError, parse_secrets_file
from secrets_agent.backends.namespaces import Naming
from secrets_agent.config.validators import setting
from secrets_agent.errors import BackendError
from secrets_agent.kinds import Kind, per_kind

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int]  # (inode, size, mtime_ns): any edit or replace changes it


@dataclass(frozen=True)
class FileOptions:
    connections_file: str = setting("", path=True)
    variables_file: str = setting("", path=True)
    config_file: str = setting("", path=True)

    def path(self, kind: Kind) -> str:
        value: str = per_kind(self, kind, "{}_file")
        return value

    def naming(self) -> Naming:
        """Each kind's ids are keys of its own file: kinds meet only when they share one."""

        def named(kind: Kind, secret_id: str, team: str | None) -> str | None:
            path = self.path(kind)
            return f"{os.path.realpath(path)}\0{secret_id}" if path and team is None else None

        remedy = 'give each kind a file of its own, or set one to ""'
        return Naming(named, key="{}_file", remedy=remedy)

    def validate(self) -> list[tuple[str, str]]:
        paths = {f"{kind.plural}_file": self.path(kind) for kind in Kind}
        if not any(paths.values()):
            return [("", "set at least one of " + ", ".join(paths))]
        return [
            (key, "must end in " + ", ".join(SUFFIXES))
            for key, value in paths.items()
            if value and Path(value).suffix.lower() not in SUFFIXES
        ]


class _Source:
    """One file's last good parse, and the stamp it was parsed at."""

    def __init__(self, backend: str, kind: Kind, path: Path) -> None:
        self.backend, self.kind, self.path = backend, kind, path
        self.stamp: Stamp | None = None
        self.values: dict[str, str] = {}
        # One bad entry fails only its own lookups: id → why (never the value).
        self.bad: dict[str, str] = {}
        self.error: str | None = None
        self.loaded = False  # ``values`` come from a good parse (not only the empty start)
        # One re-read at a time: lookups arriving during a re-read wait for it, not start more.
        self.reading = asyncio.Lock()

    async def refresh(self) -> None:
        """Re-read the file, on a thread, if it changed since the last read."""
        async with self.reading:
            stamp = self.current_stamp()
            if stamp != self.stamp:
                await asyncio.to_thread(self.load, stamp)

    def current_stamp(self) -> Stamp | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self, stamp: Stamp | None) -> None:
        """Re-parse the file; on error keep the previous values and remember why."""
        if stamp is None:
            log.warning("backend %r: %s is gone; serving nothing from it", self.backend, self.path)
            self.values, self.bad, self.loaded = {}, {}, False
            self.stamp, self.error = None, f"{self.path} does not exist"
            return
        try:
            raw = parse_secrets_file(self.path, self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, FileFormatError) as exc:
            self.error = f"{self.path}: {_describe(exc)}"
            # Before a good parse (or after the file went) there is nothing to keep: say so.
            kept = "keeping previous contents" if self.loaded else "serving nothing from it"
            log.error("backend %r: cannot load %s; %s", self.backend, self.error, kept)
        else:
            self.values, self.bad = _entries(self.kind, raw)
            self.error, self.loaded = None, True
            for key, why in self.bad.items():
                log.error("backend %r: %s: %s %r %s", self.backend, self.path, self.kind, key, why)
        self.stamp = stamp


def _entries(kind: Kind, raw: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    values: dict[str, str] = {}
    bad: dict[str, str] = {}
    for key, value in raw.items():
        try:
            text = _normalise(kind, key, value)
        except ConnectionFormatError as exc:
            bad[key] = str(exc)
        except Exception as exc:  # no value may take the file (or the agent) down with it
            bad[key] = f"cannot be read ({type(exc).__name__})"
        else:
            if text is not None:
                values[key] = text
    return values, bad


def _normalise(kind: Kind, key: str, value: Any) -> str | None:
    """The text Airflow should get for one entry; None when Airflow would find nothing."""
    if isinstance(value, list) and kind is not Kind.VARIABLE:
        # Airflow reads a one-item list as its item (its own tests store connections so).
        if not value:
            return None
        if len(value) > 1:
            raise ConnectionFormatError("is defined more than once (a list of several values)")
        value = value[0]
    if kind is Kind.CONNECTION:
        return _typed_query(connection_value(value, conn_id=key))
    if value is None:
        return None  # null, ~ or an empty YAML value: absent, so the lookup falls through
    if isinstance(value, str):
        return value
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    # A structured or typed variable becomes JSON text, so Variable.get(deserialize_json=True)
    # works.
    return to_json(value)


def _typed_query(text: str) -> str:
    """A URI whose query holds extras, as the fields Airflow's own parse of the file gives.

    LocalFilesystemBackend builds ``airflow.models.Connection(uri=...)``, which reads each query
    value as JSON where it parses (``?verify=false&timeout=10``: False and 10); a worker turns a
    URI the agent returns into the task SDK's ``Connection.from_uri``, which keeps them as text
    (``"false"``, which is true). Fields carry the typed values to every Airflow alike.
    """
    if "?" not in text or text.lstrip().startswith("{"):
        return text
    try:
        fields = uri_fields(text)
    except ValueError:  # UriFormatError, or urlsplit's own (an unclosed IPv6 bracket)
        return text  # Airflow refuses it as it would have
    if "extra" not in fields:
        return text
    return to_json(fields)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(exc)


class FileBackend(Backend):
    type_name = "file"
    Options = FileOptions
    options: FileOptions

    def __init__(
        self, name: str, options: FileOptions, context: BackendContext | None = None
    ) -> None:
        super().__init__(name, options, context)
        self._sources = {
            kind: _Source(name, kind, Path(options.path(kind)))
            for kind in Kind
            if options.path(kind)
        }

    async def start(self) -> None:
        for source in self._sources.values():
            stamp = source.current_stamp()
            if stamp is None:
                raise BackendError(self.name, f"{source.path} does not exist")
            await asyncio.to_thread(source.load, stamp)
            if source.error:
                raise BackendError(self.name, f"cannot load {source.error}")

    async def check_local(self) -> None:
        await self.start()  # everything the file backend reads is local

    def supports(self, kind: Kind) -> bool:
        return kind in self._sources

    def health(self) -> Health:
        errors = [s.error for s in self._sources.values() if s.error]
        errors += [f"{s.path}: {len(s.bad)} bad entries" for s in self._sources.values() if s.bad]
        # A bad edit keeps the last good contents serving, so the backend stays ready.
        return Health(ready=True, detail="; ".join(errors) if errors else "ok")

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        source = self._sources.get(kind)
        if source is None:
            return None
        if source.current_stamp() != source.stamp:
            await source.refresh()
        why = source.bad.get(secret_id)
        if why is not None:
            raise BackendError(self.name, f"{source.path}: {kind} {secret_id!r} {why}")
        return source.values.get(secret_id)
