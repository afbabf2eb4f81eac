"""A lease in the store: one node of the fleet does a job at a time (e.g. follows a change feed).

A claim (``claim.py``: ``SET name token NX PX ttl``, in one script with the planted check)
takes it; renewing and releasing compare the token first, in one script on one key (one slot).
A node that cannot reach the store gets ``LeaseUnknown``: it stops the job until it can renew.
A name planted without a usable expiry (of any type) is replaced by the claim; one of another
type that expires is a lease held by someone else until then, not a store down. (Without a
shared tier, ``tier.SoloLease``: always held.)
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from secrets_agent.lookup.shared.claim import Claims, ms
from secrets_agent.lookup.shared.guard import Squatted, StoreDown, StoreGuard
from secrets_agent.lookup.shared.tier import LeaseUnknown

# SET, not PEXPIRE: the documented ACL grants +set (a script's commands are checked too).
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return 1 end return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class StoreLease:
    """A ``tier.Lease`` in the store."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        name: str,
        ttl: float,
        guard: StoreGuard,
        claims: Claims,
    ) -> None:
        self._client, self._name, self.ttl, self._guard = client, name, ttl, guard
        self._claims = claims
        self._token = secrets.token_hex(16)

    async def acquire(self) -> bool:
        call = self._claims.claim(self._client, self._name, self._token, self.ttl)
        try:
            reply = await self._guard.call("lease", call)
        except StoreDown:
            raise LeaseUnknown from None
        return self._claims.taken("lease", reply)

    async def renew(self) -> bool:
        call = self._client.eval(_RENEW, 1, self._name, self._token, str(ms(self.ttl)))
        try:
            return bool(await self._guard.call("lease", call))
        except Squatted:
            return False
        except StoreDown:
            raise LeaseUnknown from None

    async def release(self) -> None:
        call = self._client.eval(_RELEASE, 1, self._name, self._token)
        await self._guard.quietly(call, "lease")
