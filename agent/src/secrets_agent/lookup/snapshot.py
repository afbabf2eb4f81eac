"""Encrypted warm start: the cache's values, still Fernet tokens, in one file across restarts.

The file is ``MAGIC`` followed by one Fernet token (under the cache's key) of a JSON document
holding each value's token, age, backend and version, and each backend's configuration as a
digest. Ids are inside the encryption too, and the token's HMAC means a corrupt, truncated or
foreign file is refused as a whole. Misses are never written: "not found" must be asked again
after a restart. A value is restored only if its backend's configuration is the same as when it
was written: a backend whose name now points elsewhere (another Vault, mount, account, vault)
must never serve, even stale, what the old one held.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from secrets_agent.config.schema import BackendConfig, CacheConfig
from secrets_agent.errors import StartupError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import Persisted, SecretCache
from secrets_agent.lookup.cipher import Cipher
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

MAGIC = b"airflow-secrets-agent snapshot v1\n"
_MAX_SIZE = 256 * 1024 * 1024  # far above max_entries' worth; refuse anything bigger unread


def require_snapshot_keys(cache: CacheConfig, keys: list[bytes]) -> None:
    """A snapshot needs configured keys (``check-config`` asks this too, as ``run`` does)."""
    if cache.snapshot_file and not keys:
        # A random key dies with the process: the snapshot it wrote could never be read back.
        raise StartupError(
            "cache.snapshot_file needs a configured encryption key "
            "(encryption.key_file, key_env or credential), not a random one"
        )


def backend_identities(backends: Iterable[BackendConfig]) -> dict[str, str]:
    """Each backend's name and a digest of its whole configuration (credentials included:
    agents that may read different secrets must not share values, as for the fleet tier)."""
    return {
        b.common.name: hashlib.sha256(repr((b.common, b.options)).encode("utf-8")).hexdigest()
        for b in backends
    }


class Snapshot:
    """One snapshot file for a chain of ``backends`` (``backend_identities``); ``wall`` is
    real time, since ages must survive a reboot."""

    def __init__(
        self,
        path: str | Path,
        metrics: Metrics,
        *,
        backends: Mapping[str, str],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._metrics, self._wall = metrics, wall
        self._backends = dict(backends)

    def collect(self, cache: SecretCache) -> tuple[Cipher, bytes]:
        """What to write, taken from the cache on the event loop (the cache is not thread-safe)."""
        entries = [
            [*_key(item), item.token.decode("ascii"), item.age, item.source, item.version]
            for item in cache.persisted()
        ]
        document = {"written_at": self._wall(), "backends": self._backends, "entries": entries}
        return cache.cipher, json.dumps(document, separators=(",", ":")).encode()

    def write(self, cipher: Cipher, document: bytes) -> bool:
        """Encrypt and replace the file atomically (mode 0600); safe to run in a thread."""
        data = MAGIC + cipher.encrypt(document.decode())
        temporary: Path | None = None
        try:
            # A fresh, unpredictable name created with O_EXCL (mkstemp, mode 0600): nobody can
            # have placed a file or a link there for us to write through.
            fd, name = tempfile.mkstemp(".tmp", f".{self.path.name}.", self.path.parent)
            temporary = Path(name)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            _fsync_directory(self.path.parent)
        except OSError as exc:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    temporary.unlink()
            log.warning("cannot write the cache snapshot %s: %s", self.path, exc.strerror)
            self._metrics.snapshot_writes.labels("failure").inc()
            return False
        self._metrics.snapshot_writes.labels("success").inc()
        return True

    def save(self, cache: SecretCache) -> bool:
        return self.write(*self.collect(cache))

    def load(self, cache: SecretCache) -> int:
        """Restore the file's values into ``cache`` as stale; anything unusable is ignored."""
        try:
            with self.path.open("rb") as file:
                data = file.read(_MAX_SIZE + 1)
        except FileNotFoundError:
            self._metrics.snapshot_loads.labels("absent").inc()
            return 0
        except OSError as exc:
            return self._ignore(f"cannot be read ({exc.strerror})")
        if len(data) > _MAX_SIZE or not data.startswith(MAGIC):
            return self._ignore("is not a snapshot of this agent")
        text = cache.cipher.decrypt(data[len(MAGIC) :])
        if text is None:
            return self._ignore(
                "cannot be decrypted: written under a key no longer configured, or corrupt"
            )
        try:
            document = json.loads(text)
            items = self._parse(document)
            written = document.get("backends") or {}  # none in a file from before they were
            if not isinstance(written, dict):
                raise TypeError("bad backends")
        except (ValueError, TypeError, KeyError, AttributeError):
            return self._ignore("is corrupt")
        kept = [i for i in items if self._same_backend(i.source, written)]
        count = cache.restore(kept)
        self._metrics.snapshot_loads.labels("loaded").inc()
        left = len(items) - len(kept)
        log.info(
            "cache snapshot: %d values restored as stale until refreshed%s",
            count,
            f"; {left} left out, their backend removed or configured differently" if left else "",
        )
        return count

    def _same_backend(self, source: str | None, written: dict[str, Any]) -> bool:
        """The value's backend is configured now as it was when the value was written."""
        return source is not None and self._backends.get(source, "") == written.get(source)

    def _parse(self, document: Any) -> list[Persisted]:
        # Time spent down counts against max_stale; a wall clock that went back counts as none.
        elapsed = max(0.0, self._wall() - float(document["written_at"]))
        items = []
        for kind, secret_id, team, token, age, source, version in document["entries"]:
            if not all(isinstance(v, str | None) for v in (team, source, version)):
                raise TypeError("bad entry")
            key = (Kind(kind), str(secret_id), team)
            age = float(age) + elapsed
            items.append(Persisted(key, token.encode("ascii"), age, source, version))
        return items

    def _ignore(self, reason: str) -> int:
        log.warning("cache snapshot %s %s; starting without it", self.path, reason)
        self._metrics.snapshot_loads.labels("ignored").inc()
        return 0


def _key(item: Persisted) -> list[str | None]:
    kind, secret_id, team = item.key
    return [kind.value, secret_id, team]


def _write_all(fd: int, data: bytes) -> None:
    # A write may stop short without an error (a disk that fills up): the next one raises it.
    view = memoryview(data)
    while view:
        if (written := os.write(fd, view)) == 0:  # never for a file; a loop must still end
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
