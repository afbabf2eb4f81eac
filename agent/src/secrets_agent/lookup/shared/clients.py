"""Store clients from ``[shared_cache]``: one server by URL, the master a Sentinel names, or a
cluster from its seed nodes."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY
from redis.exceptions import ConnectionError as NoConnection
from redis.exceptions import TimeoutError as NoAnswer

from secrets_agent.config.schema import SharedCacheConfig
from secrets_agent.config.validators import (
    CLUSTER_SCHEMES,
    CLUSTER_URL,
    SENTINEL_SCHEMES,
    SENTINEL_URL,
)
from secrets_agent.errors import StartupError

_MAX_CONNECTIONS = 64  # bounded: a slow store must not collect one socket per waiting lookup


def store_client(shared: SharedCacheConfig) -> tuple[Redis | RedisCluster, list[Redis]]:
    """The client for entries, and any others to close with it (the sentinels')."""
    _check_ca(shared)
    common: dict[str, Any] = {
        "socket_timeout": shared.timeout,
        "socket_connect_timeout": shared.connect_timeout,
        # One immediate retry, on a new connection: a pooled socket the store closed (it was
        # restarted) fails once. Every store call stays bounded by ``timeout`` as a whole, and
        # the breaker decides when a failing store is tried again. (The asyncio Retry: the
        # synchronous one silently never retries an awaited call.)
        "retry": Retry(NoBackoff(), 1),
    }
    tls: dict[str, Any] = {"ssl_ca_certs": shared.ca_file} if shared.ca_file else {}
    auth = _auth(shared)
    if shared.url.startswith(CLUSTER_SCHEMES):
        return _cluster(shared, common, tls, auth), []
    if not shared.url.startswith(SENTINEL_SCHEMES):
        client: Redis = Redis.from_url(
            shared.url, max_connections=_MAX_CONNECTIONS, **common, **tls, **auth
        )
        return client, []
    match = SENTINEL_URL.fullmatch(shared.url)
    if match is None:  # the loader checked it; this keeps the types honest
        raise StartupError("shared_cache.url: not a redis+sentinel:// URL")
    hosts = [(host, int(port)) for host, port in _hosts(match["hosts"])]
    if shared.url.startswith("rediss"):
        tls["ssl"] = True
    # Sentinels are asked without the store's password (they seldom share it), over the same
    # TLS; the master they name gets the password.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis leaves it unannotated
        hosts, sentinel_kwargs={**common, **tls}, **common, **tls
    )
    master: Redis = sentinel.master_for(
        match["master"],
        redis_class=Redis,
        db=int(match["db"] or 0),
        max_connections=_MAX_CONNECTIONS,
        **auth,
    )
    return master, list(sentinel.sentinels)


def _cluster(
    shared: SharedCacheConfig, common: dict[str, Any], tls: dict[str, Any], auth: dict[str, Any]
) -> RedisCluster:
    match = CLUSTER_URL.fullmatch(shared.url)
    if match is None:  # the loader checked it; this keeps the types honest
        raise StartupError("shared_cache.url: not a redis+cluster:// URL")
    if shared.url.startswith("rediss"):
        tls["ssl"] = True
    return StoreCluster(
        startup_nodes=[ClusterNode(host, int(port)) for host, port in _hosts(match["hosts"])],
        # A slot without a primary must not stop the others: its lookups go to the upstream
        # (through the breaker) while the rest of the cluster keeps sharing.
        require_full_coverage=False,
        max_connections=_MAX_CONNECTIONS,  # per node
        **common,
        **tls,
        **auth,
    )


class StoreCluster(RedisCluster):
    """redis-py's cluster client, which does not wait for one primary to come back."""

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except (NoConnection, NoAnswer):
            # The slot map was read, but its first primary, whom redis-py asks for the command
            # table, did not answer (down, its failover not done). After a pipeline's failure
            # it asks that one again every time: every command failed, on every slot, until
            # it was back. The next attempt asks another primary (as redis-py does itself
            # after a single command's failure).
            primaries = self.nodes_manager.get_nodes_by_server_type(PRIMARY)
            if primaries:
                self.nodes_manager.move_node_to_end_of_cached_nodes(primaries[0].name)
            raise


def _hosts(text: str) -> list[tuple[str, str]]:
    """``host:port,...`` as (host, port); an IPv6 address loses the URL's brackets (``[::1]``
    is no name a resolver knows, and the clients take the bare address)."""
    pairs = (h.rpartition(":") for h in text.split(","))
    return [(host.removeprefix("[").removesuffix("]"), port) for host, _, port in pairs]


def check_files(shared: SharedCacheConfig) -> None:
    """What a start reads from this machine for the store (``check-config`` asks too)."""
    _check_ca(shared)
    _auth(shared)


def _check_ca(shared: SharedCacheConfig) -> None:
    """A CA file that cannot be loaded fails here, not as a connection error per store call
    (the tier would look merely unreachable)."""
    if shared.ca_file:
        try:
            ssl.create_default_context(cafile=shared.ca_file)
        except OSError as exc:  # ssl.SSLError included: not PEM certificates
            reason = exc.strerror or "not PEM certificates"
            raise StartupError(f"shared_cache.ca_file ({shared.ca_file}): {reason}") from None


def _auth(shared: SharedCacheConfig) -> dict[str, Any]:
    if shared.iam is None:
        return {"username": shared.username or None, "password": _password(shared)}
    from secrets_agent.lookup.shared.iam import IamTokens

    if shared.iam.credentials_file:  # botocore would skip a file it cannot read, silently
        _read("shared_cache.iam.credentials_file", shared.iam.credentials_file)
    return {"credential_provider": IamTokens(shared.username, shared.iam)}


def _password(shared: SharedCacheConfig) -> str | None:
    if shared.password_file:
        text = _read("shared_cache.password_file", shared.password_file).strip()
        if not text:  # a secret mounted before it was filled in: not "no password"
            raise StartupError(f"shared_cache.password_file ({shared.password_file}): empty")
        return text
    return shared.password or None


def _read(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise StartupError(f"{key} ({path}): cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise StartupError(f"{key} ({path}): not UTF-8 text") from None
