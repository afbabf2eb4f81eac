"""Taking a lease's or a refresh lock's name: free, still ours, or planted.

Agents always set these names with an expiry of their configured time. A name without one
(``SET name x`` by a store writer, a ``PERSIST``), or with one far beyond what any agent sets,
would be held forever: no node would follow the change feed again, or every node would wait
on the lock and go upstream. Such a name is planted: the claim replaces it. The PTTL is read
in the same script as the SET that replaces it (one key, one slot; a node runs one script at
a time), so two agents can never both take it. An ACL without ``+pttl`` (before this check)
still takes free names; the store cannot then tell planted ones, which is said once a
``log_interval``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from secrets_agent.lookup.shared.breaker import ThrottledLog
from secrets_agent.ops.metrics import Metrics

# A name lasting longer than this many times the time an agent sets is planted: fleets whose
# nodes are configured with lease or lock times this far apart would take each other's.
MARGIN = 10

# KEYS[1] the name, ARGV token, time (ms), the longest an agent's name may last (ms).
# Returns {taken: 0 held, 1 taken or still ours, 2 planted and replaced; 1 if PTTL refused}.
# pcall: another type at the name (a GET's WRONGTYPE) is a name held, not a script error.
_CLAIM = """
local left = redis.pcall('pttl', KEYS[1])
local blind = 0
if type(left) ~= 'number' then blind, left = 1, -2 end
if left == -1 or left > tonumber(ARGV[3]) then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return {2, blind}
end
if redis.call('set', KEYS[1], ARGV[1], 'nx', 'px', ARGV[2]) then return {1, blind} end
if redis.pcall('get', KEYS[1]) == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return {1, blind}
end
return {0, blind}
"""

PLANTED = 2


class Claims:
    """One claim script for every lease and lock of a tier; planted names counted and said."""

    def __init__(self, metrics: Metrics, planted: ThrottledLog, blind: ThrottledLog) -> None:
        self._metrics, self._planted, self._blind = metrics, planted, blind

    def claim(self, target: Any, name: str, token: str, ttl: float) -> Awaitable[Any]:
        """Stack (on a pipeline) or send (on a client) the claim of ``name`` for ``ttl``."""
        reply: Awaitable[Any] = target.eval(_CLAIM, 1, name, token, ms(ttl), ms(ttl * MARGIN))
        return reply

    def taken(self, what: str, reply: object) -> bool:
        """Whether the claim took the name (or it was still ours); ``what``: lease or lock."""
        code, blind = _pair(reply)
        if blind:
            self._blind.warning(
                "shared cache: the store refuses PTTL to this user, so a lease or lock planted "
                "without an expiry cannot be replaced: add +pttl to its ACL (docs/fleet.md)"
            )
        if code == PLANTED:
            self._metrics.shared_errors.labels(f"{what}_planted").inc()
            self._planted.warning(
                f"shared cache: a {what} held without an expiry, or for far longer than any "
                "agent sets, was replaced (a store writer's key, or a crashed peer's)"
            )
        return code > 0


def _pair(reply: object) -> tuple[int, int]:
    if isinstance(reply, list | tuple) and len(reply) == 2:
        code, blind = reply
        if isinstance(code, int) and isinstance(blind, int):
            return code, blind
    return 0, 0  # not our script's answer: held, as a name we cannot take


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
