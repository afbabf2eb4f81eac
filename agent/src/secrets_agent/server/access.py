"""Access rules: which local identity may read which ids, checked before ``lookup``.

A peer's rules are the ``[[access]]`` rules that name its uid, one of its gids (primary or
supplementary) or everyone. A read is allowed when one of them allows it and none denies it;
with no rule for the peer it is denied. With no rules at all there is no ``AccessRules`` and
every admitted peer reads everything, as before rules existed. Decisions are remembered per
peer and read: the lean path asks for the same few keys again and again. Both memos are
two-generation memos (``server.memo``): bounded, and a fleet's hot keys stay remembered however
many others pass through; a reload builds new rules with empty memos, swapped whole.

Allows match the id as written. A deny also matches every spelling an upstream reads as the
same name: the env backend looks up ``id.upper()`` and Key Vault turns ``_`` into ``-`` and
ignores case, so a deny of ``shared_admin_*`` must refuse ``SHARED-ADMIN-KEY`` too.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from secrets_agent.config.schema import AccessRule
from secrets_agent.config.validators import GLOB_SET, resolve_group, resolve_user
from secrets_agent.errors import StartupError
from secrets_agent.kinds import Kind
from secrets_agent.server import peers
from secrets_agent.server.memo import Generations, sized_for
from secrets_agent.server.peers import Peer

MEMO = 8192  # peers remembered at most (and decisions per peer, at least): bounded memory
EVERYONE = "everyone"


@dataclass(frozen=True)
class Rule:
    """One rule, compiled: who it is for, and a matcher per kind (None: no id of that kind)."""

    who: str  # "uid", "gid" or "everyone"
    id: int
    allow: bool
    ids: dict[Kind, re.Pattern[str] | None]
    teams: frozenset[str]  # empty: reads for any team or none
    everything: frozenset[Kind]  # kinds where a pattern is a bare "*": every id

    @classmethod
    def compile(cls, rule: AccessRule, position: int) -> Rule:
        who, ident = _who(rule, position)
        allow = rule.effect == "allow"
        ids = {kind: _matcher(rule.patterns(kind), fold=not allow) for kind in Kind}
        everything = frozenset(kind for kind in Kind if "*" in rule.patterns(kind))
        teams = frozenset(rule.teams if allow else map(_fold_team, rule.teams))
        return cls(who, ident, allow, ids, teams, everything)

    def applies_to(self, peer: Peer, groups: frozenset[int]) -> bool:
        if self.who == "uid":
            return peer.uid == self.id
        if self.who == "gid":
            return peer.gid == self.id or self.id in groups
        return True

    def matches(self, kind: Kind, secret_id: str, team: str | None) -> bool:
        if self.teams:
            if team is None:
                return False
            if (team if self.allow else _fold_team(team)) not in self.teams:
                return False
        return self.names(kind, secret_id)

    def names(self, kind: Kind, secret_id: str) -> bool:
        """Whether the id is one of this rule's (for a deny: in any spelling of the same name)."""
        matcher = self.ids[kind]
        if matcher is None:
            return False
        if matcher.fullmatch(secret_id) is not None:
            return True
        # IGNORECASE folds one character at a time; upper() also turns "ß" into "SS".
        return not self.allow and matcher.fullmatch(secret_id.upper()) is not None


class PeerRules:
    """The rules for one peer identity (uid, gid, groups), with its decisions remembered."""

    __slots__ = ("_memo", "_rules")

    def __init__(self, rules: Sequence[Rule], memo: int = MEMO) -> None:
        self._rules = tuple(rules)
        self._memo: Generations[tuple[Kind, str, str | None], bool] = Generations(memo)

    def allows(self, key: tuple[Kind, str, str | None]) -> bool:
        """Whether this peer may read ``(kind, id, team)``: the cache's key for the read."""
        decision = self._memo.young.get(key)  # the hot path: one dict lookup
        if decision is None:
            decision = self._memo.get(key)
            if decision is None:
                decision = self._decide(*key)
                self._memo.put(key, decision)
        return decision

    def _decide(self, kind: Kind, secret_id: str, team: str | None) -> bool:
        allowed = False
        for rule in self._rules:
            if rule.matches(kind, secret_id, team):
                if not rule.allow:
                    return False  # a deny wins over every allow
                allowed = True
        return allowed

    def may_touch(self, kind: Kind, secret_id: str) -> bool:
        """Whether some read of ``(kind, id)`` (for any team or none) is allowed: the scope
        of an invalidation."""
        allowed = False
        for rule in self._rules:
            if not rule.names(kind, secret_id):
                continue
            if not rule.allow and not rule.teams:
                return False  # denied for every team: nothing of it may be touched
            allowed = allowed or rule.allow
        return allowed

    def covers(self, kind: Kind) -> bool:
        """Whether every id of ``kind`` is allowed (for any team) and none is denied."""
        return not any(not r.allow and r.ids[kind] is not None for r in self._rules) and any(
            r.allow and not r.teams and kind in r.everything for r in self._rules
        )


class AccessRules:
    """Every ``[[access]]`` rule of one configuration: built with the runtime, swapped whole."""

    def __init__(self, rules: Sequence[Rule], keys: int = 0) -> None:
        self._rules = tuple(rules)
        self._peers: Generations[tuple[int, int, frozenset[int]], PeerRules] = Generations(MEMO)
        self._decisions = sized_for(keys)  # each peer's decisions: one per key it reads

    @classmethod
    def from_config(cls, rules: Sequence[AccessRule], keys: int = 0) -> AccessRules | None:
        """None without rules: nothing to check, today's behaviour at no cost. ``keys``: how
        many distinct keys the cache holds (``max_entries``), which sizes the decision memos."""
        if not rules:
            return None
        compiled = [Rule.compile(rule, index) for index, rule in enumerate(rules)]
        denied = [i for i, rule in enumerate(compiled) if rule.who == "gid" and not rule.allow]
        if denied and not peers.groups_reported():
            # A peer would be seen in its primary group only, and escape a deny on the others.
            raise StartupError(
                f"access[{denied[0]}]: a deny by group needs the peer's supplementary groups, "
                "which this kernel does not report (SO_PEERGROUPS, Linux 4.13 and later): "
                "deny by uid instead"
            )
        return cls(compiled, keys)

    def __len__(self) -> int:
        return len(self._rules)

    def for_peer(self, peer: Peer, groups: frozenset[int]) -> PeerRules:
        key = (peer.uid, peer.gid, groups)
        found = self._peers.get(key)
        if found is None:
            found = PeerRules(
                [r for r in self._rules if r.applies_to(peer, groups)], self._decisions
            )
            self._peers.put(key, found)
        return found


def _who(rule: AccessRule, position: int) -> tuple[str, int]:
    if rule.uid is not None:
        return "uid", rule.uid
    if rule.gid is not None:
        return "gid", rule.gid
    if rule.user:
        uid = resolve_user(rule.user)
        if uid is None:  # it existed when the config was loaded; gone since
            raise StartupError(f"access[{position}].user: no such user on this machine")
        return "uid", uid
    if rule.group:
        gid = resolve_group(rule.group)
        if gid is None:
            raise StartupError(f"access[{position}].group: no such group on this machine")
        return "gid", gid
    return EVERYONE, -1


def _matcher(patterns: Sequence[str], fold: bool = False) -> re.Pattern[str] | None:
    """One anchored regex for a kind's patterns: fnmatch's translation, case-sensitive, or with
    ``fold`` (a deny) blind to case and to ``-`` versus ``_``."""
    if not patterns:
        return None
    if not fold:
        return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return re.compile("|".join(f"(?:{_folded(p)})" for p in patterns), re.IGNORECASE)


_SEPARATOR, _SET = "\x01", "\x02"  # placeholders: check_glob refuses control characters


def _folded(pattern: str) -> str:
    """fnmatch's translation of ``pattern`` (its star handling kept), where ``-`` and ``_`` are
    one character: outside a set either matches both, and a set holding either holds both."""
    sets: list[str] = []
    parts: list[str] = []
    for index, piece in enumerate(GLOB_SET.split(pattern)):
        if index:
            parts.append(_SET)
        parts.append(piece.replace("-", _SEPARATOR).replace("_", _SEPARATOR))
    for found in GLOB_SET.findall(pattern):
        regex = fnmatch.translate(found)[len("(?s:") : -len(")\\Z")]
        if found.startswith("[!"):
            # Case-blind, [!x] would refuse X as well: never match less than the set itself.
            regex = f"(?-i:{regex})"
        either = re.fullmatch(regex, "-") or re.fullmatch(regex, "_")
        sets.append(f"(?:[-_]|{regex})" if either else regex)
    translated = fnmatch.translate("".join(parts)).replace(_SEPARATOR, "[-_]")
    pieces = translated.split(_SET)
    return pieces[0] + "".join(s + rest for s, rest in zip(sets, pieces[1:], strict=True))


def _fold_team(team: str) -> str:
    return team.lower().replace("-", "_")
