"""The secret-read route (``GET /v1/<kind>/<id>``), answered the same whichever layer parsed it.

aiohttp's handler and the lean HTTP/1.1 path (``server.lean``) both hand a parsed ``ReadQuery``
and the connection's peer to ``Reads``: ``now`` answers without waiting when it can (a cached
value, a refusal, a bad request); ``answer`` goes on to the upstream when it must.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote  # what json.dumps uses, in C

from secrets_agent.config.validators import TEAM_NAME
from secrets_agent.errors import AccessDeniedError, BackendError, DeniedError, InvalidIdError
from secrets_agent.kinds import KIND_BY_SEGMENT, MAX_ID_LENGTH, Kind, validate_id
from secrets_agent.lookup.cache import CacheState, Key, Result
from secrets_agent.ops.audit import Read
from secrets_agent.ops.logs import RateLimited
from secrets_agent.server.access import AccessRules, PeerRules
from secrets_agent.server.context import ApiContext, Serving
from secrets_agent.server.errors import Answer, answer_for, error_answer
from secrets_agent.server.peers import AccessPolicy, Peer

# The route as aiohttp builds it from ``/v1/{kind:...}/{id:.*}``: both layers match with it.
SEGMENTS = "|".join(KIND_BY_SEGMENT)
ROUTE = f"/v1/{{kind:{SEGMENTS}}}/{{id:.*}}"
PATTERN = re.compile(f"/v1/(?P<kind>{SEGMENTS})/(?P<id>.*)")
# What the requests counter and latency histogram call each segment's requests.
KIND_LABELS = {segment: kind.value for segment, kind in KIND_BY_SEGMENT.items()}
# An id that is plainly valid (no need for validate_id's per-character Unicode checks).
_PLAIN_ID = re.compile(rf"(?!\.\.?\Z)[A-Za-z0-9_.\-]{{1,{MAX_ID_LENGTH}}}")
_NO_STORE = ("Cache-Control", "no-store")
# Enum attribute lookups cost more than these dict lookups, on every request.
_OUTCOME = {state: state.lower() for state in CacheState}
_KIND = {kind: kind.value for kind in Kind}
# A cached answer's headers but ``Age``, which the answer carries on its own: one shared tuple
# per state, whatever the ages (a memo by age filled up once TTLs ran to hours).
HEADERS = {state: (("X-Cache", state.value), _NO_STORE) for state in CacheState}
# A 404's body names only the kind: built once, not per answer.
NOT_FOUND = {
    kind: error_answer(404, "not_found", f"no backend has this {kind.value}").body for kind in Kind
}


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """One read as the request said it: segment and id decoded, query values as given."""

    segment: str
    raw_id: str
    team: str | None = None
    refresh: str = "false"
    no_cache: bool = False  # ``Cache-Control: no-cache`` on the request


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a query means, worked out once (the lean path keeps it with the request's bytes)."""

    query: ReadQuery
    kind: Kind
    invalid: Answer | None  # the 400 it gets whoever asks, or None: a valid read
    forced: bool  # refresh-now: past the cache to the upstream (rate-limited)
    prefix: str  # the answer's JSON up to the value
    key: Key  # the cache's key for it


@dataclass(slots=True)
class Caller:
    """Who is on the other end of the connection (fixed by the kernel at connect)."""

    peer: Peer
    groups: frozenset[int]
    allowed_by: AccessPolicy | None = None  # the last policy that allowed it (a reload swaps)
    rules: PeerRules | None = None  # its [[access]] rules, taken from ``rules_of``
    rules_of: AccessRules | None = None

    def may_read(self, access: AccessRules, read: Prepared) -> bool:
        """The rules' decision (remembered per peer and read); a reload's rules apply at once."""
        rules = self.rules
        if self.rules_of is not access or rules is None:
            rules = self.rules = access.for_peer(self.peer, self.groups)
            self.rules_of = access
        return rules.allows(read.key)

    def allowed(self, policy: AccessPolicy) -> bool:
        if policy is self.allowed_by:
            return True
        if not policy.allows(self.peer, self.groups):
            return False
        self.allowed_by = policy
        return True


class Reads:
    def __init__(self, context: ApiContext) -> None:
        self.context = context
        # A denied peer can send requests as fast as it likes; the log hears once a minute.
        self._denials = RateLimited(logging.getLogger(__name__))
        # The same answer for every refused read of a kind: nothing in it depends on the id.
        self._refusals = {
            kind: answer_for(
                AccessDeniedError(f"access rules do not let this peer read this {kind.value}")
            )
            for kind in Kind
        }
        self._team_refusal = error_answer(
            403, "team_denied", "this peer is not bound to the team it names"
        )

    def prepare(self, query: ReadQuery) -> Prepared:
        """Validate a query and precompute its answer's frame; nothing here depends on who asks."""
        kind = KIND_BY_SEGMENT[query.segment]
        invalid = None
        if not _PLAIN_ID.fullmatch(query.raw_id):
            try:
                validate_id(query.raw_id)
            except InvalidIdError as exc:
                invalid = answer_for(exc)
        team = query.team
        if invalid is None and team is not None and not TEAM_NAME.fullmatch(team):
            invalid = error_answer(400, "invalid_team", "team must be 1-64 letters, digits, - or _")
        if invalid is None and query.refresh not in ("true", "false"):
            invalid = error_answer(400, "invalid_refresh", "refresh must be true or false")
        # The peer says its copy is outdated (a rotated password, a failed login): ask upstream.
        forced = query.refresh == "true" or query.no_cache
        prefix = f'{{"kind": "{_KIND[kind]}", "id": {_quote(query.raw_id)}, "value": '
        return Prepared(query, kind, invalid, forced, prefix, (kind, query.raw_id, query.team))

    def plain(self, caller: Caller, read: Prepared) -> Result | None:
        """The cache's fresh answer for a read with nothing else to it (almost every read): a
        valid read, not refresh-now, that the peer may make with no check left to run and no
        line to audit. None otherwise, or if not fresh in the cache (``settle`` says more)."""
        runtime = self.context.current()
        if (
            caller.allowed_by is not runtime.policy  # a first request, or a reload since
            or read.invalid is not None
            or read.forced
            or read.key[2] is not None  # a team: the policy's bindings to check
        ):
            return None
        access, audit = runtime.access, self.context.audit
        if (access is not None and not caller.may_read(access, read)) or (
            audit is not None and audit.enabled
        ):
            return None
        return runtime.service.cached(read.key)

    def body(self, read: Prepared, result: Result) -> tuple[int, bytes]:
        """The status and JSON body of a cached read's answer (a value, or a negative's 404)."""
        if result.value is None:  # a negative: as common as a hit where Airflow asks first
            return 404, NOT_FOUND[read.kind]
        return 200, f"{read.prefix}{_quote(result.value)}}}".encode("ascii")

    def now(self, caller: Caller, read: Prepared) -> Answer | None:
        """The answer if it needs no waiting (cached, refused, malformed), else None."""
        if (result := self.plain(caller, read)) is not None:
            return self._found(caller.peer, read, result)
        return self.settle(caller, read)

    def settle(self, caller: Caller, read: Prepared) -> Answer | None:
        """``now`` for a read ``plain`` did not answer: refused, malformed, audited, team-bound
        or not cached (None)."""
        runtime = self.context.current()
        if caller.allowed_by is not runtime.policy and not caller.allowed(runtime.policy):
            query = read.query
            return self.denied_peer(
                caller.peer, read.kind, query.raw_id[:MAX_ID_LENGTH], query.team
            )
        if read.invalid is not None:
            return read.invalid
        # The team from the cache's key, which a hit reads anyway: one object fewer to touch
        # (among thousands of keys, each costs a trip to memory).
        team = read.key[2]
        if team is not None and not runtime.policy.may_ask_for(caller.peer, caller.groups, team):
            return self.team_refused(caller.peer, read.kind, read.query.raw_id, team)
        access = runtime.access
        if access is not None and not caller.may_read(access, read):
            return self.refused(caller.peer, read)
        if read.forced:
            return None
        result = runtime.service.cached(read.key)
        return None if result is None else self._found(caller.peer, read, result)

    async def answer(self, caller: Caller, query: ReadQuery) -> Answer:
        """The answer, asking the upstream if the cache cannot say (never raises)."""
        read = self.prepare(query)
        if (ready := self.now(caller, read)) is not None:
            return ready
        return await self.fetch(caller, read)

    async def fetch(self, caller: Caller, read: Prepared) -> Answer:
        """The rest of ``answer`` once ``now`` returned None (the query is valid and allowed)."""
        kind, secret_id, team = read.kind, read.query.raw_id, read.query.team
        runtime = self.context.current()
        try:
            result = await runtime.service.lookup(
                kind, secret_id, team, refresh=read.forced, peer=caller.peer.uid
            )
        except Exception as exc:
            if (now := self._reloaded(caller, read, runtime)) is not None:
                return now
            backend = exc.backend if isinstance(exc, BackendError) else None
            failure = "denied" if isinstance(exc, DeniedError) else "error"
            self._audit(caller.peer, kind, secret_id, team, failure, backend)
            return answer_for(exc)
        if (now := self._reloaded(caller, read, runtime)) is not None:
            return now
        return self._found(caller.peer, read, result)

    def _reloaded(self, caller: Caller, read: Prepared, began: Serving) -> Answer | None:
        """Reloaded while the upstream answered (or failed): the rules now in force decide (a
        refusal, or the new cache's copy), not those the read began under."""
        return None if self.context.current() is began else self.now(caller, read)

    def denied_peer(
        self, peer: Peer, kind: Kind | None, secret_id: str, team: str | None
    ) -> Answer:
        """A peer outside the allow-lists: counted, audited (for a read), logged once a minute."""
        self.context.metrics.denied_peers.inc()
        if kind is not None:  # a denied read: the audit's most interesting line
            self._audit(peer, kind, secret_id, (team or "")[:64] or None, "denied", None)
        self._denials.log(
            "denied", logging.WARNING, "refused a peer: uid %d gid %d", peer.uid, peer.gid
        )
        detail = f"uid {peer.uid} gid {peer.gid} may not use this agent"
        return error_answer(403, "peer_denied", detail)

    def team_refused(self, peer: Peer, kind: Kind, secret_id: str, team: str) -> Answer:
        """A read naming a team not bound to the peer: counted, audited, logged once a minute
        per peer (a worker misconfigured, or one trying another team's secrets)."""
        self.context.metrics.team_denied.labels(_KIND[kind]).inc()
        self._audit(peer, kind, secret_id, team, "denied", None)
        self._denials.log(
            f"team-{peer.uid}",
            logging.WARNING,
            "refused a read for a team not bound to the peer: uid %d gid %d pid %d, %s of %s",
            peer.uid,
            peer.gid,
            peer.pid,
            _KIND[kind],
            team,  # a valid team name (``prepare`` refused any other): config, not a secret
        )
        return self._team_refusal

    def refused(self, peer: Peer, read: Prepared) -> Answer:
        """A read the access rules refuse: counted, audited, logged once a minute per peer;
        neither the cache nor the upstream is asked, so nothing tells whether the id exists."""
        kind = read.kind
        self.context.metrics.access_denied.labels(_KIND[kind]).inc()
        self._audit(peer, kind, read.query.raw_id, read.query.team, "denied", None)
        self._denials.log(
            f"access-{peer.uid}",
            logging.WARNING,
            "access rules refused a read: uid %d gid %d pid %d, %s",
            peer.uid,
            peer.gid,
            peer.pid,
            _KIND[kind],
        )
        return self._refusals[kind]

    def _found(self, peer: Peer, read: Prepared, result: Result) -> Answer:
        audit = self.context.audit
        if audit is not None and audit.enabled:
            outcome = "negative" if result.value is None else _OUTCOME[result.state]
            query = read.query
            self._audit(peer, read.kind, query.raw_id, query.team, outcome, result.source)
        status, body = self.body(read, result)
        return Answer(status, body, HEADERS[result.state], int(result.age))

    def _audit(
        self,
        peer: Peer,
        kind: Kind,
        secret_id: str,
        team: str | None,
        result: str,
        backend: str | None,
    ) -> None:
        audit = self.context.audit
        if audit is not None and audit.enabled:
            who = (peer.uid, peer.gid, peer.pid)
            audit.record(Read(*who, kind.value, secret_id, team, result, backend))
