"""The compiled read (``server/_hit.c``) against its reference (``server/hit.py``): for every read
it answers, the same bytes, counts and cache effects; where it declines, no effect at all."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secrets_agent.kinds import Kind
from secrets_agent.server.context import ApiContext
from secrets_agent.server.hit import CLOSE, KEEP, PASS, Hit, make_hit
from secrets_agent.server.lean import HeadParser, Renderer, http_date
from secrets_agent.server.memo import Generations
from secrets_agent.server.peers import Peer
from secrets_agent.server.reads import NOT_FOUND, Caller, Reads
from support.helpers import DEMO_BACKEND, FakeClock, RunningAgent, agent_config, running_agent

pytestmark = pytest.mark.integration

WALL = 1_800_000_000.25  # the renderer's clock: Date is the same for both twins
VALUES = {
    "plain": "s3cret-value",
    "empty": "",
    "escapes": 'a "quoted" \\ back\\slash\n\r\t\b\f\x00\x1f\x7f end',
    "unicode": "mot de passe: çà€ — 日本語",
    "astral": "emoji 😀 and 𝄞 (two surrogates each)",
    "long": "x" * 20_000 + "é",
    # Around the compiled path's own AES buffer (1,024 bytes on the stack, more allocated):
    # a whole padding block, the buffer exactly full, and one block past it.
    "one_block": "y" * 16,
    "stack_full": "y" * 1_008,
    "past_stack": "y" * 1_024,
}


class Wire:
    """A transport that keeps what is written."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)


@dataclass
class Twins:
    running: RunningAgent
    clock: FakeClock
    reference: Hit
    compiled: Any
    heads: HeadParser
    caller: Caller = field(
        default_factory=lambda: Caller(Peer(os.getpid(), os.getuid(), os.getgid()), frozenset())
    )

    @property
    def service(self) -> Any:
        return self.running.agent.runtime_now().service

    def request(self, path: str, extra: str = "") -> bytes:
        """A request's bytes, parsed once (so both twins find it in the memo)."""
        data = f"GET /v1/{path} HTTP/1.1\r\nHost: agent\r\n{extra}\r\n".encode()
        self.heads.parse(data)
        return data

    def effects(self, twin: Any, data: bytes) -> tuple[int, list[bytes], dict[Any, int], Any]:
        """What one call of ``twin`` did: its code, the bytes written, the counts it added, and
        the cache's order and read and used marks after it."""

        async def call() -> tuple[int, list[bytes], dict[Any, int], Any]:
            metrics = self.running.agent.metrics
            metrics.tally.fold()
            cache = self.service.cache
            for entry in cache._entries.values():
                entry.read = entry.used = False
            histogram = {k: sum(v) for k, v in metrics.request_latency._counts.items()}
            wire = Wire()
            code = twin(self.caller, data, wire)
            metrics.tally.gather()  # the compiled twin keeps its counts until they are read
            counts: dict[Any, int] = dict(metrics.tally.pending)
            for kind, buckets in metrics.request_latency._counts.items():
                counts[("latency", kind)] = sum(buckets) - histogram.get(kind, 0)
            state = [(key, entry.read, entry.used) for key, entry in cache._entries.items()]
            return code, wire.sent, {k: v for k, v in counts.items() if v}, state

        return self.running.call(call())

    def same(self, data: bytes) -> tuple[int, bytes]:
        """Both twins on ``data``: the same effects; the code and the answer."""
        reference = self.effects(self.reference, data)
        compiled = self.effects(self.compiled, data)
        assert compiled == reference
        code, sent, _, _ = reference
        return code, b"".join(sent)


@pytest.fixture(params=["cpu-aes", "context"])
def twins(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[Twins]:
    """Both ways the compiled twin decrypts: the CPU's AES instructions (``_aes.h``), and the
    cipher's CipherContext (a CPU without them, or another architecture)."""
    with native_aes(request.param == "cpu-aes"):
        clock = FakeClock()
        with running_agent(agent_config(short_tmp), clock=clock) as running:
            yield build(running, clock)


@contextlib.contextmanager
def native_aes(allowed: bool) -> Iterator[None]:
    from secrets_agent.server import _hit

    if _hit.native_aes(allowed) != allowed:
        pytest.skip("this CPU has no AES instructions")  # only with allowed=True
    try:
        yield
    finally:
        _hit.native_aes(True)


def build(
    running: RunningAgent,
    clock: FakeClock,
    wall: Callable[[], float] = lambda: WALL,
    size: int = 8192,
    current: Callable[[], Any] | None = None,
) -> Twins:
    """The twins on ``running``'s runtime, read as the agent reads it (its ``Current``, whose
    slot the compiled twin reads) or through ``current``."""
    agent = running.agent

    async def make() -> Twins:
        serving = agent.current if current is None else current
        reads = Reads(ApiContext(serving, agent.metrics, agent.audit))
        heads = HeadParser(8190, 8190, reads.prepare, size)
        renderer = Renderer(wall=wall)
        memo: Generations[bytes, Any] = heads.memo
        reference = Hit(memo, reads, renderer, agent.metrics, size)
        compiled = make_hit(memo, reads, renderer, agent.metrics, size)
        assert type(compiled).__module__ == "secrets_agent.server._hit", "not built"
        twins = Twins(running, clock, reference, compiled, heads)
        assert twins.caller.allowed(agent.runtime_now().policy)  # as the first request does
        return twins

    return running.call(make())


def put(twins: Twins, secret_id: str, value: str | None, **options: Any) -> None:
    async def store() -> None:
        twins.service.cache.put(Kind.VARIABLE, secret_id, value, **options)

    twins.running.call(store())


def test_the_compiled_read_is_built_and_chosen() -> None:
    """The suite's install builds it (a C compiler is a test dependency)."""
    from secrets_agent.server import _hit

    assert callable(_hit.Hit)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_a_hit_is_answered_alike(twins: Twins, name: str) -> None:
    put(twins, f"v_{name}", VALUES[name], source="local", age=7.25)
    code, answer = twins.same(twins.request(f"variables/v_{name}"))
    assert code == KEEP
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"\r\nAge: 7\r\n" in head and b"Date: Fri, 15 Jan 2027 08:00:00 GMT" in head
    assert body.decode("ascii").endswith("}")


class Refusing:
    """A decryption context that must not be used."""

    def update(self, data: bytes) -> bytes:
        raise AssertionError("the CipherContext was used")


def test_the_cpu_aes_path_does_not_use_the_context(short_tmp: Path) -> None:
    """Where the CPU has the instructions, a hit decrypts without the cipher's context (and
    the contract above holds for that path, not only for the context)."""
    with native_aes(True):
        clock = FakeClock()
        with running_agent(agent_config(short_tmp), clock=clock) as running:
            twins = build(running, clock)
            twins.service.cache.cipher.loop_decryptor = Refusing()  # read at the first hit
            for name in ("plain", "past_stack"):
                put(twins, f"v_{name}", VALUES[name], source="local")
                code, answer = twins.same(twins.request(f"variables/v_{name}"))
                assert code == KEEP
                assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["value"] == VALUES[name]


def test_a_known_miss_and_connection_close_are_answered_alike(twins: Twins) -> None:
    put(twins, "absent", None)  # as the service stores a miss: no source
    code, answer = twins.same(twins.request("variables/absent", "Connection: close\r\n"))
    assert code == CLOSE
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"\r\nConnection: close\r\n" in answer


def test_a_value_without_a_backend_counts_the_backends_it_spares(twins: Twins) -> None:
    put(twins, "orphan", "value")  # e.g. a warm start's copy: every accepting backend spared
    code, _ = twins.same(twins.request("variables/orphan"))
    assert code == KEEP


def test_a_cache_hit_marks_its_entry_and_moves_none(twins: Twins) -> None:
    """Read (worth refreshing ahead) and used (kept at the next eviction): nothing reordered."""
    put(twins, "first", "1", source="local")
    put(twins, "second", "2", source="local")
    data = twins.request("variables/first")
    for _ in range(2):  # parsed, then remembered
        code, _, _, state = twins.effects(twins.compiled, data)
        assert code == KEEP
        assert state[-2:] == [
            ((Kind.VARIABLE, "first", None), True, True),
            ((Kind.VARIABLE, "second", None), False, False),
        ]


def test_counts_kept_by_the_compiled_twin_are_in_every_read_of_the_metrics(twins: Twins) -> None:
    """The twin counts in C until the metrics are read: a scrape (``/metrics``, ``status``)
    shows every hit it answered, and one that goes away hands its counts over first."""
    metrics = twins.running.agent.metrics
    put(twins, "counted", "v", source="local")
    data = twins.request("variables/counted")

    def shown() -> tuple[float, float, float]:
        async def read() -> tuple[float, float, float]:
            assert b"secrets_agent_requests_total" in metrics.render()  # a scrape
            return (
                metrics.sample("secrets_agent_requests_total", kind="variable", status="200") or 0,
                metrics.sample("secrets_agent_request_duration_seconds_count", kind="variable")
                or 0,
                metrics.calls_avoided("local"),
            )

        return twins.running.call(read())

    before = shown()

    async def answer(twin: Any, times: int) -> None:
        for _ in range(times):
            assert twin(twins.caller, data, Wire()) == KEEP

    twins.running.call(answer(twins.compiled, 5))
    assert shown() == tuple(n + 5 for n in before)
    # A twin that goes (a stop; the GC) with counts not yet read hands them over as it goes.
    reads = Reads(ApiContext(twins.running.agent.current, metrics, twins.running.agent.audit))
    other = make_hit(twins.heads.memo, reads, Renderer(wall=lambda: WALL), metrics)
    twins.running.call(answer(other, 3))
    del other
    gc.collect()
    assert shown() == tuple(n + 8 for n in before)


def _counted(twins: Twins) -> tuple[float, float, float]:
    """What a scrape shows of ``variable`` reads from ``local``: requests answered 200, their
    latencies observed, and the backend calls they spared."""
    metrics = twins.running.agent.metrics

    async def read() -> tuple[float, float, float]:
        return (
            metrics.sample("secrets_agent_requests_total", kind="variable", status="200") or 0,
            metrics.sample("secrets_agent_request_duration_seconds_count", kind="variable") or 0,
            metrics.calls_avoided("local"),
        )

    return twins.running.call(read())


def _answer(twins: Twins, data: bytes, times: int) -> None:
    async def answer() -> None:
        for _ in range(times):
            assert twins.compiled(twins.caller, data, Wire()) == KEEP

    twins.running.call(answer())


def test_counts_kept_by_the_compiled_twin_survive_its_reinitialisation(twins: Twins) -> None:
    """``__init__`` again reads the twin's state afresh: the counts it kept are handed over
    first, not dropped with the rest."""
    put(twins, "counted", "v", source="local")
    data = twins.request("variables/counted")
    before = _counted(twins)
    _answer(twins, data, 3)
    twins.compiled.__init__(twins.reference)
    assert _counted(twins) == tuple(n + 3 for n in before)


class Unaddable(int):
    """A pending count the next one cannot be added to."""

    def __add__(self, other: object) -> int:
        raise RuntimeError("not added")


def test_a_drain_that_fails_midway_keeps_what_it_did_not_hand_over(twins: Twins) -> None:
    """A drain that raises (a counter's sum, then the histogram's merge) keeps the counts it
    could not hand over for the next drain: none lost, none counted twice."""
    metrics = twins.running.agent.metrics
    put(twins, "counted", "v", source="local")
    data = twins.request("variables/counted")
    before = _counted(twins)
    _answer(twins, data, 3)
    requests = metrics.read_counters("variable")[0]  # the last child a hit counts

    def refuse(*args: Any) -> None:
        raise RuntimeError("not merged")

    async def drain() -> None:
        twins.compiled.drain()

    metrics.tally.pending[requests] = Unaddable(0)
    with pytest.raises(RuntimeError, match="not added"):
        twins.running.call(drain())
    del metrics.tally.pending[requests]
    metrics.request_latency.merge = refuse  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(RuntimeError, match="not merged"):
            twins.running.call(drain())
    finally:
        del metrics.request_latency.merge
    assert _counted(twins) == tuple(n + 3 for n in before)


def test_counts_past_the_twin_s_own_room_go_to_the_tally_at_once(twins: Twins) -> None:
    """More counters than the twin keeps in C (here, a backend's spared calls for each of 20
    backends): the rest are counted in the Tally's dict, alike."""
    for index in range(20):
        put(twins, f"from_{index}", "v", source=f"backend_{index}")
    for index in range(20):
        code, _ = twins.same(twins.request(f"variables/from_{index}"))
        assert code == KEEP


async def _change(twins: Twins, how: str) -> None:
    cache = twins.service.cache
    key = (Kind.VARIABLE, "held", None)
    if how == "replaced":
        cache.put(Kind.VARIABLE, "held", "after", source="local")
    elif how == "restamped":
        cache.restamp(Kind.VARIABLE, "held")
    elif how == "now a miss":
        cache.put(Kind.VARIABLE, "held", None)
    elif how == "dropped":
        cache.drop(key)
    elif how == "invalidated":
        cache.invalidate(Kind.VARIABLE, "held")
    elif how == "expired":
        cache.expire(key)
    elif how == "evicted":  # its second chance (it was read), then its turn
        for i in range(2 * cache._max_entries):
            cache.put(Kind.VARIABLE, f"filler_{i}", "x", source="local")
    else:  # "stored with ttl 0"
        cache.put(Kind.VARIABLE, "held", "after", source="local", ttl=0)


@pytest.mark.parametrize(
    "how",
    [
        "replaced",
        "restamped",
        "now a miss",
        "dropped",
        "invalidated",
        "expired",
        "evicted",
        "stored with ttl 0",
    ],
)
@pytest.mark.parametrize("before", ["before", None], ids=["value", "miss"])
def test_a_remembered_read_follows_its_entry(twins: Twins, how: str, before: str | None) -> None:
    """The compiled read remembers a request it answered with the entry it answered from;
    whatever the cache does to that entry since, both twins answer alike."""
    put(twins, "held", before, source=before and "local")
    data = twins.request("variables/held")
    first = twins.same(data)
    assert first[0] == KEEP
    assert twins.same(data) == first  # remembered
    twins.running.call(_change(twins, how))
    code, answer = twins.same(data)
    expected = {
        "replaced": b'"after"}',
        "restamped": first[1].split(b"\r\n\r\n", 1)[1],  # a miss is left as it was
        "now a miss": NOT_FOUND[Kind.VARIABLE],
    }.get(how)
    assert (code, answer.split(b"\r\n\r\n", 1)[-1].endswith(expected or b"")) == (
        (KEEP, True) if expected else (PASS, True)
    )


def test_a_record_brought_back_holds_the_memo_s_bytes_not_the_connection_s(
    short_tmp: Path,
) -> None:
    """Records are kept by the head memo's own bytes for a request (``LeanRead.request``), so
    a request's bytes are held once; one brought back from the old generation by a request
    must not be kept by that request's bytes (a copy the connection received)."""
    clock = FakeClock()
    with running_agent(agent_config(short_tmp), clock=clock) as running:
        twins = build(running, clock, size=4)  # two records a generation
        for name in "abc":
            put(twins, name, name, source="local")
            assert twins.same(twins.request(f"variables/{name}"))[0] == KEEP
        # a and b are in the old generation now; a copy of a's bytes brings a's record back
        received = bytes(bytearray(twins.request("variables/a")))

        async def call() -> tuple[int, int]:
            before = sys.getrefcount(received)
            code = int(twins.compiled(twins.caller, received, Wire()))
            return code, sys.getrefcount(received) - before

        assert twins.running.call(call()) == (KEEP, 0)


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("variables/a%2Fb%20c", ""),  # invalid id: a 400 for the general path
        ("variables/held?refresh=true", ""),  # refresh-now
        ("variables/held", "Cache-Control: no-cache\r\n"),
        ("variables/held?team=team_a", ""),  # a team to check against the policy
        ("variables/never-stored", ""),  # not cached: the upstream
    ],
)
def test_reads_neither_answers_are_declined_without_effect(
    twins: Twins, path: str, extra: str
) -> None:
    put(twins, "held", "v", source="local")
    put(twins, "held", "v", source="local", team="team_a")
    assert twins.same(twins.request(path, extra)) == (PASS, b"")


def test_an_unknown_request_is_declined(twins: Twins) -> None:
    assert twins.same(b"GET /v1/variables/nobody-parsed HTTP/1.1\r\nHost: a\r\n\r\n")[0] == PASS


def test_expired_reads_are_declined(twins: Twins) -> None:
    put(twins, "short", "v", source="local", ttl=5)
    data = twins.request("variables/short")
    assert twins.same(data)[0] == KEEP
    twins.clock.advance(5)
    assert twins.same(data) == (PASS, b"")


def test_the_compiled_read_leaves_refresh_ahead_to_the_reference(twins: Twins) -> None:
    put(twins, "due", "v", source="local")
    data = twins.request("variables/due")
    twins.running.call(_due(twins, (Kind.VARIABLE, "due", None)))
    assert twins.effects(twins.compiled, data)[:3] == (PASS, [], {})


async def _due(twins: Twins, key: Any) -> None:
    twins.service.cache._entries[key].refresh_at = twins.clock.now


def test_audited_reads_and_unknown_peers_are_declined(twins: Twins) -> None:
    put(twins, "held", "v", source="local")
    data = twins.request("variables/held")
    assert twins.same(data)[0] == KEEP  # remembered: checked again all the same
    audit = twins.running.agent.audit
    audit.enabled, enabled = True, audit.enabled
    try:
        assert twins.same(data) == (PASS, b"")
    finally:
        audit.enabled = enabled
    twins.caller = Caller(Peer(1, 2, 3), frozenset())  # never allowed by the policy yet
    assert twins.same(data) == (PASS, b"")


def test_a_reloaded_cache_is_read(twins: Twins) -> None:
    """The twin reads whichever cache serves now (a reload may bring another)."""
    put(twins, "held", "before", source="local")
    data = twins.request("variables/held")
    assert b'"before"' in twins.same(data)[1]

    async def swap() -> None:
        _swap_cache(twins, "after")

    twins.running.call(swap())
    assert b'"after"' in twins.same(data)[1]


@pytest.mark.parametrize("through", ["slot", "call"])
def test_a_reloaded_runtime_is_read(short_tmp: Path, through: str) -> None:
    """The twin serves under the runtime in force: read from the agent's ``Current`` slot, or
    by calling whatever else ``current`` is. A reload's new runtime (here, with a policy the
    caller was never checked against) is seen at the next read, by both twins alike."""
    clock = FakeClock()
    with running_agent(agent_config(short_tmp), clock=clock) as running:
        agent = running.agent
        twins = build(running, clock, current=None if through == "slot" else agent.runtime_now)
        put(twins, "held", "v", source="local")
        data = twins.request("variables/held")
        assert twins.same(data)[0] == KEEP  # and remembered by the compiled twin
        before = agent.runtime_now()

        async def swap(runtime: Any) -> None:
            agent._swap(runtime)

        running.call(swap(dataclasses.replace(before, policy=copy.copy(before.policy))))
        try:
            assert twins.same(data) == (PASS, b"")
        finally:
            running.call(swap(before))
        assert twins.same(data)[0] == KEEP


def _swap_cache(twins: Twins, value: str) -> None:
    """As a reload that brings another cache does (on the event loop), with ``value`` for
    ``held``."""
    runtime = twins.running.agent.runtime_now()
    old = runtime.service.cache
    new = type(old)(
        max_entries=100,
        ttl=lambda kind: 60.0,
        negative_ttl=60.0,
        max_stale=0.0,
        cipher=old.cipher,
        clock=twins.clock,
    )
    new.put(Kind.VARIABLE, "held", value, source="local")
    runtime.service.cache = new


class Reloading(Wire):
    """A transport whose write runs the agent's code before it returns: a reload brings
    another cache, and another connection's read is answered under it."""

    def __init__(self, twins: Twins, other: bytes) -> None:
        super().__init__()
        self._twins, self._other = twins, other

    def write(self, data: bytes) -> None:
        super().write(data)
        _swap_cache(self._twins, "after")
        assert self._twins.compiled(self._twins.caller, self._other, Wire()) == PASS


def test_a_read_answered_across_a_reload_is_not_remembered(twins: Twins) -> None:
    """What the twin remembers of a read holds under the runtime and cache it was answered
    with: one that changed while its answer was written must not be answered from the old
    cache's entry afterwards (which that cache never lets go of: it is dropped whole)."""
    put(twins, "held", "before", source="local")
    data, other = twins.request("variables/held"), twins.request("variables/other")

    async def first() -> int:
        return int(twins.compiled(twins.caller, data, Reloading(twins, other)))

    assert twins.running.call(first()) == KEEP
    code, answer = twins.same(data)
    assert code == KEEP and answer.endswith(b'"after"}')


@pytest.fixture
def ruled(short_tmp: Path) -> Iterator[Twins]:
    rules = f'[[access]]\nuid = {os.getuid()}\nvariables = ["open_*"]\n'
    clock = FakeClock()
    config = agent_config(short_tmp, backends=DEMO_BACKEND + rules)
    with running_agent(config, clock=clock) as running:
        twins = build(running, clock)
        twins.caller = Caller(Peer(os.getpid(), os.getuid(), os.getgid()), frozenset())
        assert running.call(_allowed(twins))
        yield twins


async def _allowed(twins: Twins) -> bool:
    return twins.caller.allowed(twins.running.agent.runtime_now().policy)


def test_access_rules_decided_once_then_answered_alike(ruled: Twins) -> None:
    put(ruled, "open_1", "v", source="local")
    put(ruled, "closed_1", "v", source="local")
    opened, closed = ruled.request("variables/open_1"), ruled.request("variables/closed_1")
    # Nothing decided yet for this peer: the compiled read leaves the decision to the reference.
    assert ruled.effects(ruled.compiled, opened)[:3] == (PASS, [], {})
    assert ruled.effects(ruled.reference, opened)[0] == KEEP  # decides, and answers
    assert ruled.same(opened)[0] == KEEP
    assert ruled.same(closed) == (PASS, b"")  # refused: the general path's 403
    # Another connection of the same peer: its own decisions, none made yet.
    ruled.caller = Caller(Peer(os.getpid(), os.getuid(), os.getgid()), frozenset())
    assert ruled.running.call(_allowed(ruled))
    assert ruled.effects(ruled.compiled, opened)[:3] == (PASS, [], {})


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(st.characters(codec="utf-8"), max_size=40))
def test_any_text_is_answered_alike(twins: Twins, value: str) -> None:
    """Every character JSON escapes (or not), in UTF-8 of every length."""
    put(twins, "any", value, source="local")
    code, answer = twins.same(twins.request("variables/any"))
    assert code == KEEP
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["value"] == value


@pytest.mark.parametrize(
    "raw",
    [b"\xf8\x80\x80", b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"],
    ids=["lead-f8", "lead-ff", "overlong", "surrogate", "cut-short", "continuation"],
)
def test_a_value_that_is_not_utf8_is_declined(twins: Twins, raw: bytes) -> None:
    """Never in the cache (``Cipher.admit`` refuses such a token): the compiled read declines
    it with no effect rather than write text the reference would not."""
    put(twins, "odd", "placeholder", source="local")

    async def plant() -> None:
        cache = twins.service.cache
        cache._entries[(Kind.VARIABLE, "odd", None)].token = cache.cipher._sealer.seal(
            b"ok " + raw + b" end"
        )

    twins.running.call(plant())
    code, sent, counts, _ = twins.effects(twins.compiled, twins.request("variables/odd"))
    assert (code, sent, counts) == (PASS, [], {})


class Broken:
    def write(self, data: bytes) -> None:
        raise ConnectionResetError("gone")


def test_a_read_that_cannot_be_remembered_is_answered_all_the_same(twins: Twins) -> None:
    """A head without the memo's bytes for its request (none was memoized): answered, written
    and counted as the reference does, and not an error once the answer is out."""
    put(twins, "held", "v", source="local")
    parsed = twins.heads.parse(twins.request("variables/held"))
    assert parsed is not None
    head = SimpleNamespace(
        read=parsed.read, keep_alive=parsed.keep_alive, kind_label=parsed.kind_label
    )

    async def call(twin: Any) -> tuple[int, list[bytes]]:
        wire = Wire()
        return twin.answer(twins.caller, head, wire), wire.sent

    reference = twins.running.call(call(twins.reference))
    assert twins.running.call(call(twins.compiled)) == reference
    assert reference[0] == KEEP


def test_a_write_that_fails_raises_from_both(twins: Twins) -> None:
    put(twins, "held", "v", source="local")
    data = twins.request("variables/held")

    async def call(twin: Any) -> None:
        twin(twins.caller, data, Broken())

    for twin in (twins.reference, twins.compiled):
        with pytest.raises(ConnectionResetError, match="gone"):
            twins.running.call(call(twin))


def test_time_s_own_clocks_are_read_alike(short_tmp: Path) -> None:
    """The agent's clocks are time.monotonic and time.time, which the twin reads itself."""
    clock: Any = time.monotonic
    with running_agent(agent_config(short_tmp), clock=clock) as running:
        twins = build(running, FakeClock(), wall=time.time)
        put(twins, "held", "v", source="local", age=7.5, ttl=3600)
        data = twins.request("variables/held")
        before = int(time.time())
        code, sent, _, _ = twins.effects(twins.compiled, data)
        after = int(time.time())
        assert code == KEEP and b"\r\nAge: 7\r\n" in sent[0]
        dates = {b"Date: " + http_date(s) + b"\r\n" for s in range(before, after + 1)}
        assert any(date in sent[0] for date in dates)
        put(twins, "short", "v", source="local", ttl=3600)
        short = twins.request("variables/short")
        assert twins.effects(twins.compiled, short)[0] == KEEP
        twins.running.call(_expire(twins, (Kind.VARIABLE, "short", None)))
        assert twins.effects(twins.compiled, short)[:3] == (PASS, [], {})


async def _expire(twins: Twins, key: Any) -> None:
    """Expired a moment ago on the agent's own clock."""
    twins.service.cache._entries[key].expires_at = time.monotonic() - 0.001
