"""A lease in the store: one node of the fleet does a job at a time (e.g. follows a change feed).

``SET name token NX PX ttl`` takes it; renewing and releasing compare the token first, in one
script on one key (one slot). A node that cannot reach the store gets ``LeaseUnknown``: it
stops the job until it can renew. A name holding another type (a store writer's) is a lease
held by someone else, not a store down. (Without a shared tier, ``tier.SoloLease``: always held.)
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from secrets_agent.lookup.shared.guard import Squatted, StoreDown, StoreGuard
from secrets_agent.lookup.shared.tier import LeaseUnknown

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class StoreLease:
    """A ``tier.Lease`` in the store."""

    def __init__(
        self, client: Redis | RedisCluster, name: str, ttl: float, guard: StoreGuard
    ) -> None:
        self._client, self._name, self.ttl, self._guard = client, name, ttl, guard
        self._token = secrets.token_hex(16)

    async def acquire(self) -> bool:
        try:
            taken = await self._guard.call(
                "lease", self._client.set(self._name, self._token, nx=True, px=_ms(self.ttl))
            )
        except Squatted:  # another type at the name (a store writer's): held, not by us
            return False
        except StoreDown:
            raise LeaseUnknown from None
        return bool(taken) or await self.renew()

    async def renew(self) -> bool:
        call = self._client.eval(_RENEW, 1, self._name, self._token, str(_ms(self.ttl)))
        try:
            return bool(await self._guard.call("lease", call))
        except Squatted:
            return False
        except StoreDown:
            raise LeaseUnknown from None

    async def release(self) -> None:
        call = self._client.eval(_RELEASE, 1, self._name, self._token)
        await self._guard.quietly(call, "lease")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
