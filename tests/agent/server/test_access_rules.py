"""Access rules: who a rule is for, which ids it matches, deny over allow, default deny."""

from __future__ import annotations

import fnmatch
import grp
import itertools
import pwd
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secrets_agent.config.loader import parse_config
from secrets_agent.errors import ConfigError, StartupError
from secrets_agent.kinds import Kind
from secrets_agent.server import peers
from secrets_agent.server.access import MEMO, AccessRules
from secrets_agent.server.peers import Peer

V, C, CFG = Kind.VARIABLE, Kind.CONNECTION, Kind.CONFIG
ALICE, BOB = Peer(pid=10, uid=1001, gid=1001), Peer(pid=11, uid=1002, gid=1002)
TEAM_A_GID = 3001


def rules(*tables: dict[str, Any]) -> AccessRules:
    config = parse_config({"access": list(tables)}, base_dir=Path("/"))
    built = AccessRules.from_config(config.access)
    assert built is not None
    return built


def allows(
    access: AccessRules,
    peer: Peer,
    kind: Kind,
    secret_id: str,
    team: str | None = None,
    groups: frozenset[int] = frozenset(),
) -> bool:
    return access.for_peer(peer, groups).allows((kind, secret_id, team))


def test_no_rules_means_nothing_to_check() -> None:
    assert AccessRules.from_config(parse_config({}, base_dir=Path("/")).access) is None


def test_a_uid_rule_allows_its_patterns_and_nothing_else() -> None:
    access = rules({"uid": 1001, "variables": ["team_a_*"], "connections": ["pg_a"]})
    assert allows(access, ALICE, V, "team_a_db")
    assert allows(access, ALICE, C, "pg_a")
    assert not allows(access, ALICE, C, "pg_a2")  # anchored: the whole id
    assert not allows(access, ALICE, V, "team_b_db")
    assert not allows(access, ALICE, CFG, "team_a_db")  # another kind: nothing
    assert not allows(access, BOB, V, "team_a_db")  # no rule for bob: denied by default


def test_sets_are_read_as_fnmatch_reads_them() -> None:
    access = rules({"uid": 1001, "variables": ["a[[]", "b[]x]", "c[!]]", "d[a[b]"]})
    for secret_id in ("a[", "b]", "bx", "cy", "d[", "da"):
        assert allows(access, ALICE, V, secret_id), secret_id
    assert not allows(access, ALICE, V, "c]") and not allows(access, ALICE, V, "dc")


def test_patterns_are_case_sensitive_and_star_spans_slashes() -> None:
    access = rules({"uid": 1001, "variables": ["Team_A/*", "x?[0-9]"]})
    assert allows(access, ALICE, V, "Team_A/deep/key")
    assert not allows(access, ALICE, V, "team_a/key")
    assert allows(access, ALICE, V, "xy7") and not allows(access, ALICE, V, "xy")


def test_gid_rules_match_the_primary_or_a_supplementary_group() -> None:
    access = rules({"gid": TEAM_A_GID, "variables": ["a_*"]})
    assert allows(access, Peer(1, 5000, TEAM_A_GID), V, "a_1")
    assert allows(access, ALICE, V, "a_1", groups=frozenset({TEAM_A_GID}))
    assert not allows(access, ALICE, V, "a_1")


def test_a_deny_by_group_is_refused_where_the_kernel_hides_supplementary_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen in its primary group only, a peer would escape a deny on its other groups: a start
    (or reload) with such a rule is refused there, and every other rule still works."""
    assert peers.groups_reported()  # this kernel: Linux >= 4.13
    monkeypatch.setattr(peers, "groups_reported", lambda: False)  # the kernel, faked: < 4.13
    allow = {"uid": 1001, "variables": ["*"]}
    deny = {"gid": TEAM_A_GID, "effect": "deny", "variables": ["a_*"]}
    with pytest.raises(StartupError, match=r"access\[1\]: a deny by group needs .*SO_PEERGROUPS"):
        rules(allow, deny)
    assert allows(rules(allow, {"gid": TEAM_A_GID, "variables": ["b_*"]}), ALICE, V, "x")
    by_uid = {"uid": 1001, "effect": "deny", "variables": ["a_*"]}
    assert not allows(rules(allow, by_uid), ALICE, V, "a_1")


def test_everyone_and_deny_wins_over_allow_whatever_the_order() -> None:
    for order in (1, -1):
        tables = [
            {"uid": 1001, "effect": "deny", "variables": ["shared_admin_*"]},
            {"everyone": True, "variables": ["shared_*"]},
        ][::order]
        access = rules(*tables)
        assert allows(access, BOB, V, "shared_admin_x")  # the deny is alice's only
        assert not allows(access, ALICE, V, "shared_admin_x")
        assert allows(access, ALICE, V, "shared_x")


@pytest.mark.parametrize(
    "alias",
    [
        "SHARED_ADMIN_KEY",  # env: AIRFLOW_VAR_ + id.upper(); Key Vault: names ignore case
        "shared_ADMIN_key",
        "shared-admin-key",  # Key Vault: every _ becomes -
        "Shared-Admin_Key",
        "shared_adm\u0131n_key",  # dotless i: "\u0131".upper() is "I"
        "\u017fhared_admin_key",  # long s: upper() is "S"
    ],
)
def test_a_deny_also_refuses_ids_that_name_the_same_secret_upstream(alias: str) -> None:
    """The env backend reads ``id.upper()`` and Key Vault reads ``_`` as ``-`` and ignores case:
    a deny that only matched the id as written would let these read the denied secret."""
    access = rules(
        {"everyone": True, "variables": ["shared_*", "*"]},
        {"everyone": True, "effect": "deny", "variables": ["shared_admin_*"]},
    )
    assert not allows(access, ALICE, V, "shared_admin_key")
    assert not allows(access, ALICE, V, alias)
    assert allows(access, ALICE, V, "shared_x")
    assert not access.for_peer(ALICE, frozenset()).may_touch(V, alias)


def test_a_deny_folds_separators_in_sets_and_in_team_names() -> None:
    access = rules(
        {"everyone": True, "variables": ["*"]},
        {"everyone": True, "effect": "deny", "variables": ["a[-]b", "c[_x]d", "e[!-]f"]},
        {"everyone": True, "effect": "deny", "variables": ["*"], "teams": ["team_b"]},
    )
    for secret_id in ("a-b", "a_b", "A_B", "c-d", "c_d", "cXd"):
        assert not allows(access, ALICE, V, secret_id), secret_id
    assert allows(access, ALICE, V, "c-x-d") and allows(access, ALICE, V, "cyd")
    for secret_id in ("e_f", "e-f", "eaf"):  # e_f matches exactly, so e-f names it too
        assert not allows(access, ALICE, V, secret_id), secret_id
    # Never less than the exact pattern: a case-blind [!x] would let X through.
    access2 = rules(
        {"everyone": True, "variables": ["*"]},
        {"everyone": True, "effect": "deny", "variables": ["s_[!x]*"]},
    )
    # (s_xyz too: the env backend reads it as S_XYZ, which is s_Xyz's name.)
    for secret_id in ("s_Xyz", "s_ayz", "S-AYZ", "s_xyz"):
        assert not allows(access2, ALICE, V, secret_id), secret_id
    assert allows(access2, ALICE, V, "t_xyz")
    for team in ("team_b", "team-b", "TEAM_B", "Team-B"):
        assert not allows(access, ALICE, V, "k", team=team), team
    assert allows(access, ALICE, V, "k", team="team_a")


def test_allows_stay_exact_whatever_a_deny_folds() -> None:
    access = rules({"everyone": True, "variables": ["team_a_*"], "teams": ["team_a"]})
    for secret_id, team in (("TEAM_A_x", "team_a"), ("team-a-x", "team_a"), ("team_a_x", "TEAM_A")):
        assert not allows(access, ALICE, V, secret_id, team=team)
    assert allows(access, ALICE, V, "team_a_x", team="team_a")


def test_team_limited_rules_match_only_reads_for_their_teams() -> None:
    access = rules({"uid": 1001, "variables": ["*"], "teams": ["team_a"]})
    assert allows(access, ALICE, V, "k", team="team_a")
    assert not allows(access, ALICE, V, "k", team="team_b")
    assert not allows(access, ALICE, V, "k")


def test_names_resolve_to_ids() -> None:
    root_group = grp.getgrgid(0).gr_name
    access = rules(
        {"user": pwd.getpwuid(0).pw_name, "variables": ["r"]},
        {"group": root_group, "variables": ["g"]},
    )
    root = Peer(1, 0, 0)
    assert allows(access, root, V, "r") and allows(access, root, V, "g")
    assert not allows(access, ALICE, V, "r")


def test_invalidation_scope() -> None:
    access = rules(
        {"uid": 1001, "variables": ["*"]},
        {"uid": 1001, "connections": ["pg_*"]},
        {"uid": 1001, "effect": "deny", "connections": ["pg_secret"]},
    )
    mine = access.for_peer(ALICE, frozenset())
    assert mine.covers(V) and not mine.covers(C) and not mine.covers(CFG)
    assert mine.may_touch(C, "pg_a") and not mine.may_touch(C, "pg_secret")
    assert not mine.may_touch(C, "other")


def test_decisions_stay_exact_and_bounded_whatever_ids_stream_past() -> None:
    access = rules(
        {"uid": 1001, "variables": ["ok_*"]},
        {"uid": 1001, "effect": "deny", "variables": ["ok_no_*"]},
    )
    mine = access.for_peer(ALICE, frozenset())
    hot = [(V, "ok_hot", None), (V, "ok_no_hot", None), (V, "other", None)]
    for i in range(3 * MEMO):  # every generation turns over several times
        assert mine.allows((V, f"ok_no_{i}" if i % 3 else f"ok_{i}", None)) == (i % 3 == 0)
        if i:  # a memo cleared whole when full would have forgotten the hot reads here
            assert all(key in mine._memo for key in hot), i
        assert [mine.allows(key) for key in hot] == [True, False, False]
    assert len(mine._memo) <= MEMO


def test_a_peer_reading_as_many_keys_as_the_cache_holds_keeps_every_decision() -> None:
    keys = 6_000  # the cache's max_entries: more than the smallest memo's young generation
    config = parse_config({"access": [{"uid": 1001, "variables": ["ok_*"]}]}, base_dir=Path("/"))
    access = AccessRules.from_config(config.access, keys)
    assert access is not None
    mine = access.for_peer(ALICE, frozenset())
    reads = [(V, f"ok_{i}", None) for i in range(keys)]
    for key in reads + random.Random(29).choices(reads, k=3 * keys):
        assert mine.allows(key)
    assert all(key in mine._memo.young for key in reads)  # none evaluated twice


def test_a_busy_peer_keeps_its_rules_while_many_others_come_and_go() -> None:
    access = rules({"everyone": True, "variables": ["*"]})
    busy = access.for_peer(ALICE, frozenset())
    for uid in range(2000, 2000 + 3 * MEMO):
        assert access.for_peer(Peer(1, uid, uid), frozenset()).allows((V, "k", None))
        assert access.for_peer(ALICE, frozenset()) is busy  # not rebuilt: still remembered
    assert len(access._peers) <= MEMO


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"variables": ["x"]}, "access[0]: needs exactly one of uid, user, gid, group or"),
        ({"uid": 1, "gid": 2, "variables": ["x"]}, "access[0]: needs exactly one of"),
        ({"uid": 1}, "access[0]: names no ids"),
        ({"user": "no-such-user-here", "variables": ["x"]}, "access[0].user: no such user"),
        ({"group": "no-such-group-here", "variables": ["x"]}, "access[0].group: no such group"),
        # Digits to str.isdigit, but no uid: "²" is no number to int(), "٣" is 3 to it.
        ({"user": "\u00b2", "variables": ["x"]}, "access[0].user: no such user"),
        ({"user": "\u0663", "variables": ["x"]}, "access[0].user: no such user"),
        ({"group": "\u00b2", "variables": ["x"]}, "access[0].group: no such group"),
        ({"group": "\u0663", "variables": ["x"]}, "access[0].group: no such group"),
        ({"user": "a\x00b", "variables": ["x"]}, "access[0].user: no such user"),  # not a crash
        # Past what uid_t holds ((uid_t)-1 is "no uid"): a typo that could never match.
        ({"uid": 2**32 - 1, "variables": ["x"]}, "access[0].uid: must be <= 4294967294"),
        ({"gid": 10**30, "variables": ["x"]}, "access[0].gid: must be <= 4294967294"),
        ({"user": "4294967295", "variables": ["x"]}, "access[0].user: no such user"),
        ({"group": "a\x00b", "variables": ["x"]}, "access[0].group: no such group"),
        ({"uid": 1, "variables": ["a[b"]}, "access[0].variables: pattern has a [ without"),
        # fnmatch reads a ] right after [ or [! as a member: these close nothing.
        ({"uid": 1, "variables": ["a[]"]}, "access[0].variables: pattern has a [ without"),
        ({"uid": 1, "variables": ["a[!]"]}, "access[0].variables: pattern has a [ without"),
        ({"uid": 1, "variables": ["[a]b[c"]}, "access[0].variables: pattern has a [ without"),
        ({"uid": 1, "variables": [""]}, "access[0].variables: patterns must be 1-500"),
        ({"uid": 1, "variables": ["a b"]}, "access[0].variables: patterns must not hold"),
        ({"uid": 1, "connections": ["x"], "effect": "maybe"}, "access[0].effect: must be one"),
        ({"uid": 1, "variables": ["x"], "teams": ["no such"]}, "access[0].teams: must be 1-64"),
        ({"uid": 1, "variables": ["x"], "kinds": ["x"]}, "access[0].kinds: unknown key"),
    ],
)
def test_bad_rules_are_refused_naming_their_position(table: dict[str, Any], problem: str) -> None:
    good = {"uid": 7, "variables": ["ok"]}
    with pytest.raises(ConfigError) as info:
        parse_config({"access": [table, good]}, base_dir=Path("/"))
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
    with pytest.raises(ConfigError) as info:  # the position is the rule's, wherever it is
        parse_config({"access": [good, table]}, base_dir=Path("/"))
    assert any(p.startswith(problem.replace("[0]", "[1]")) for p in info.value.problems)


ID_CHARS = st.sampled_from("ab_-./Z9")
ids = st.text(ID_CHARS, min_size=1, max_size=12)
globs = st.text(st.sampled_from("ab_-./Z9*?"), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, database=None)
@given(allow=st.lists(globs, max_size=3), deny=st.lists(globs, max_size=3), secret_id=ids)
def test_decision_is_allow_unless_denied(allow: list[str], deny: list[str], secret_id: str) -> None:
    """Against fnmatchcase itself: allowed iff some allow pattern matches the id and no deny
    pattern matches it blind to case and to - versus _ (no sets here: folding both is exact)."""
    tables: list[dict[str, Any]] = [{"everyone": True, "variables": ["__none__"]}]
    if allow:
        tables.append({"uid": 1001, "variables": allow})
    if deny:
        tables.append({"gid": 1001, "effect": "deny", "variables": deny})
    access = rules(*tables)
    expected = any(fnmatch.fnmatchcase(secret_id, p) for p in allow) and not any(
        fnmatch.fnmatchcase(fold(secret_id), fold(p)) for p in deny
    )
    assert allows(access, ALICE, V, secret_id) is expected
    assert allows(access, ALICE, V, secret_id) is expected  # and the remembered decision too
    assert not allows(access, ALICE, C, secret_id)


def spellings(secret_id: str) -> set[str]:
    """Every id an upstream may read as the same name as ``secret_id`` (ASCII): any case of
    each letter (env, Key Vault), - or _ for each separator (Key Vault)."""
    options = [
        {ch.lower(), ch.upper()} if ch.isalpha() else {"-", "_"} if ch in "-_" else {ch}
        for ch in secret_id
    ]
    return {"".join(p) for p in itertools.product(*options)}


deny_globs = st.lists(
    st.sampled_from(["a", "B", "_", "-", "*", "?", "[a_]", "[!b]", "[A-]", "[!-]", "[b-d]"]),
    min_size=1,
    max_size=4,
).map("".join)


@settings(max_examples=300, deadline=None, database=None)
@given(deny=deny_globs, secret_id=st.text(st.sampled_from("aAbBc_-"), min_size=1, max_size=5))
def test_a_deny_refuses_every_spelling_and_never_less_than_its_pattern(
    deny: str, secret_id: str
) -> None:
    access = rules(
        {"everyone": True, "variables": ["*"]},
        {"everyone": True, "effect": "deny", "variables": [deny]},
    )
    denied = not allows(access, ALICE, V, secret_id)
    named = any(fnmatch.fnmatchcase(other, deny) for other in spellings(secret_id))
    if fnmatch.fnmatchcase(secret_id, deny):
        assert denied  # never less than the pattern as written
    if "[!" not in deny:  # a negated set is matched as written (case-sensitive)
        assert denied is named


def fold(text: str) -> str:
    return text.lower().replace("-", "_")


def test_check_config_refuses_bad_rules_by_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from secrets_agent.cli import main

    path = tmp_path / "agent.toml"
    path.write_text(
        '[[backends]]\nname = "env"\ntype = "env"\n'
        '[[access]]\nuser = "no-such-user-here"\nvariables = ["a"]\n'
        '[[access]]\neveryone = true\nvariables = ["a[b"]\n'
    )
    assert main(["check-config", str(path)]) == 78
    err = capsys.readouterr().err
    assert "access[0].user: no such user on this machine" in err
    assert "access[1].variables: pattern has a [ without its ]" in err
    path.write_text(
        '[[backends]]\nname = "env"\ntype = "env"\n[[access]]\nuid = 0\nconfig = ["*"]\n'
    )
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("; 1 [[access]] rules")  # rules are on
    path.write_text('[[backends]]\nname = "env"\ntype = "env"\n')
    assert main(["check-config", str(path)]) == 0
    assert "; no [[access]] rules (every admitted peer reads every id)" in capsys.readouterr().out
