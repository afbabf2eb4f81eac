"""Backend reading Airflow's LocalFilesystemBackend files, re-read whenever a file changes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secrets_agent.backends.base import Backend, BackendContext, Health
from secrets_agent.backends.connections import ConnectionFormatError, connection_value
from secrets_agent.backends.file.formats import SUFFIXES, FileFormatError, parse_secrets_file
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
        self.error: str | None = None

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
            self.values, self.stamp, self.error = {}, None, f"{self.path} does not exist"
            return
        try:
            raw = parse_secrets_file(self.path, self.path.read_text(encoding="utf-8"))
            self.values = {key: _normalise(self.kind, key, v) for key, v in raw.items()}
        except (OSError, UnicodeDecodeError, FileFormatError, _EntryError) as exc:
            self.error = f"{self.path}: {_describe(exc)}"
            log.error(
                "backend %r: cannot load %s; keeping previous contents", self.backend, self.error
            )
        else:
            self.error = None
        self.stamp = stamp


class _EntryError(ValueError):
    pass


def _normalise(kind: Kind, key: str, value: Any) -> str:
    if kind is Kind.CONNECTION:
        try:
            return connection_value(value)
        except ConnectionFormatError as exc:
            raise _EntryError(f"connection {key!r} {exc}") from None
    if isinstance(value, str):
        return value
    # A structured variable becomes JSON text, so Variable.get(deserialize_json=True) works.
    return json.dumps(value)


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

    def supports(self, kind: Kind) -> bool:
        return kind in self._sources

    def health(self) -> Health:
        errors = [s.error for s in self._sources.values() if s.error]
        # A bad edit keeps the last good contents serving, so the backend stays ready.
        return Health(ready=True, detail="; ".join(errors) if errors else "ok")

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        source = self._sources.get(kind)
        if source is None:
            return None
        stamp = source.current_stamp()
        if stamp != source.stamp:
            await asyncio.to_thread(source.load, stamp)
        return source.values.get(secret_id)
