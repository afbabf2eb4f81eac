"""The lean read path's parser and renderer, on their own: what they take, what they leave."""

from __future__ import annotations

import random

import pytest

from secrets_agent.kinds import Kind
from secrets_agent.server.errors import Answer
from secrets_agent.server.lean import HeadParser, Renderer, could_be_lean, parse_head
from secrets_agent.server.memo import sized_for
from secrets_agent.server.reads import Prepared, ReadQuery

LIMITS = (8190, 8190)


def parse(head: bytes) -> ReadQuery | None:
    parsed = parse_head(head, *LIMITS)
    return None if parsed is None else parsed.query


def test_a_plain_read_is_lean() -> None:
    parsed = parse_head(b"GET /v1/variables/k HTTP/1.1\r\nHost: localhost", *LIMITS)
    assert parsed is not None
    assert parsed.query == ReadQuery("variables", "k", None, "false", False)
    assert parsed.keep_alive and parsed.kind_label == "variable"


@pytest.mark.parametrize(
    ("target", "segment", "raw_id", "team", "refresh"),
    [
        ("/v1/connections/my_db", "connections", "my_db", None, "false"),
        ("/v1/config/core__sql_alchemy_conn", "config", "core__sql_alchemy_conn", None, "false"),
        ("/v1/variables/a%2Fb", "variables", "a/b", None, "false"),
        ("/v1/variables/100%25", "variables", "100%", None, "false"),
        ("/v1/variables/caf%C3%A9%20au%20lait", "variables", "café au lait", None, "false"),
        ("/v1/variables/k?team=team_a", "variables", "k", "team_a", "false"),
        ("/v1/variables/k?refresh=true&team=t", "variables", "k", "t", "true"),
        ("/v1/variables/k?team=a&team=b", "variables", "k", "a", "false"),  # the first, as aiohttp
        ("/v1/variables/k?refresh=maybe", "variables", "k", None, "maybe"),  # checked later
        ("/v1/variables/..", "variables", "..", None, "false"),  # validated later, like any id
    ],
)
def test_targets_decode_as_aiohttp_reads_them(
    target: str, segment: str, raw_id: str, team: str | None, refresh: str
) -> None:
    query = parse(f"GET {target} HTTP/1.1\r\nHost: x".encode())
    assert query == ReadQuery(segment, raw_id, team, refresh, False)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/variables/k HTTP/1.0\r\nHost: x",  # 1.0's keep-alive rules: aiohttp's
        b"get /v1/variables/k HTTP/1.1\r\nHost: x",
        b"HEAD /v1/variables/k HTTP/1.1\r\nHost: x",
        b"GET /v1/variables/k HTTP/1.1",  # no Host: aiohttp refuses it
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nHost: y",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nConnection: close, te",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\n folded: continuation",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nBad Header: 1",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9",
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\nX: bare-lf",
        b"GET /v1/variables/k#frag HTTP/1.1\r\nHost: x",
        b"GET /v1/variables/\xc3\xa9 HTTP/1.1\r\nHost: x",
        b"GET /v1/variables/a b HTTP/1.1\r\nHost: x",
        b"GET /v1/variables/k\x00 HTTP/1.1\r\nHost: x",
        b"GET /v1/secrets/k HTTP/1.1\r\nHost: x",
        b"GET /v1/variables HTTP/1.1\r\nHost: x",
        b"GET /v1/variables/%0A HTTP/1.1\r\nHost: x",  # aiohttp's route does not match: a 404
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 9000,
    ],
)
def test_anything_unusual_is_left_to_aiohttp(head: bytes) -> None:
    assert parse_head(head, *LIMITS) is None


def test_connection_and_cache_control_headers() -> None:
    close = parse_head(b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nConnection: Close", *LIMITS)
    assert close is not None and not close.keep_alive
    kept = parse_head(b"GET /v1/variables/k HTTP/1.1\r\nhost: x\r\nconnection: keep-alive", *LIMITS)
    assert kept is not None and kept.keep_alive
    no_cache = parse(
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nCache-Control: max-age=0, No-Cache"
    )
    assert no_cache is not None and no_cache.no_cache
    # aiohttp's handler reads the first Cache-Control header only; so does the lean path.
    first = parse(
        b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nCache-Control: max-age=0\r\n"
        b"Cache-Control: no-cache"
    )
    assert first is not None and not first.no_cache
    body = parse(b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nContent-Length: 0")
    assert body is not None


def test_could_be_lean_looks_only_at_the_start() -> None:
    assert could_be_lean(b"") and could_be_lean(b"GE") and could_be_lean(b"GET /v1/variab")
    assert not could_be_lean(b"POST /v1/cache") and not could_be_lean(b"GET /healthz")


def test_the_head_memo_answers_the_same_and_stays_bounded() -> None:
    prepared: list[ReadQuery] = []

    def prepare(query: ReadQuery) -> Prepared:
        prepared.append(query)
        return Prepared(query, Kind.VARIABLE, None, False, "", (Kind.VARIABLE, query.raw_id, None))

    parser = HeadParser(*LIMITS, prepare, size=3)
    heads = [f"GET /v1/variables/k{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(5)]
    first = [parser.parse(h) for h in heads]
    assert [r.read.query.raw_id for r in first if r] == [f"k{i}" for i in range(5)]
    assert parser.parse(heads[-1]) is first[-1] and len(prepared) == 5  # remembered
    assert len(parser.memo) <= 3
    assert parser.parse(b"GARBAGE") is None and parser.memo.get(b"GARBAGE", 1) is None
    big = b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 600
    parsed = parser.parse(big)
    assert parsed is not None and big not in parser.memo  # big heads are not kept
    # A kept read carries the memo's own key (what the compiled read path remembers it by,
    # so its bytes are held once); one not kept, none.
    assert parsed.request is None and first[-1] is not None and first[-1].request is heads[-1]


def test_a_head_still_asked_for_outlives_any_number_of_others() -> None:
    prepared: list[str] = []

    def prepare(query: ReadQuery) -> Prepared:
        prepared.append(query.raw_id)
        return Prepared(query, Kind.VARIABLE, None, False, "", (Kind.VARIABLE, query.raw_id, None))

    parser = HeadParser(*LIMITS, prepare, size=64)
    hot = b"GET /v1/variables/hot HTTP/1.1\r\nHost: x\r\n\r\n"
    for i in range(1_000):  # a fleet's tail: many heads, each asked for once
        parser.parse(f"GET /v1/variables/k{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert parser.parse(hot) is not None
    assert prepared.count("hot") == 1 and len(parser.memo) <= 64


def test_a_mix_of_as_many_keys_as_the_cache_holds_is_parsed_once() -> None:
    prepared: list[str] = []

    def prepare(query: ReadQuery) -> Prepared:
        prepared.append(query.raw_id)
        return Prepared(query, Kind.VARIABLE, None, False, "", (Kind.VARIABLE, query.raw_id, None))

    keys = 6_000  # more than the smallest memo's young generation (4,096)
    parser = HeadParser(*LIMITS, prepare, size=sized_for(keys))
    heads = [f"GET /v1/variables/k{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(keys)]
    mix = random.Random(29).choices(heads, k=5 * keys)
    for head in heads + mix:
        assert parser.parse(head) is not None
    assert len(prepared) == keys  # every head parsed once, however the mix rotates
    assert all(head in parser.memo.young for head in heads)  # each a single dict lookup away


def test_renderer_writes_status_headers_length_date_and_body() -> None:
    wall = [1_800_000_000.0]
    renderer = Renderer(wall=lambda: wall[0])
    answer = Answer(200, b'{"a": 1}', (("X-Cache", "HIT"),), age=3)
    first = renderer.render(answer, keep_alive=True)
    assert first == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nX-Cache: HIT\r\n"
        b"Age: 3\r\nContent-Length: 8\r\nDate: Fri, 15 Jan 2027 08:00:00 GMT\r\n\r\n"
        b'{"a": 1}'
    )
    wall[0] += 61
    closing = renderer.render(Answer(404, b"{}"), keep_alive=False)
    assert closing.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Date: Fri, 15 Jan 2027 08:01:01 GMT\r\nConnection: close\r\n\r\n{}" in closing


def test_ages_of_hours_share_one_rendered_head() -> None:
    renderer = Renderer(wall=lambda: 1_800_000_000.0)
    headers = (("X-Cache", "HIT"), ("Cache-Control", "no-store"))
    for age in range(0, 86_400, 7):  # a day's TTL: every age a read can carry
        rendered = renderer.render(Answer(200, b"{}", headers, age), keep_alive=True)
        assert b"\r\nAge: %d\r\nContent-Length: 2\r\n" % age in rendered
    assert len(renderer._heads) == 1  # built once, not once per age
