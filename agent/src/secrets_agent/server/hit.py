"""The usual read answered in one call: a request head seen before, for a plain read of a value
the cache holds fresh.

``Hit`` is the reference. ``secrets_agent.server._hit`` (C, built with the package where a C
compiler is at hand; ``SECRETS_AGENT_NO_EXTENSIONS=1`` turns it off) answers the same reads with
the same bytes, counts and cache effects in a fraction of the CPU, and declines (``PASS``) the
few it leaves to this module's code: a first request or a reload since, an access decision not
yet made, an audited or team-bound read, a value due for refresh-ahead. A declined read has had
no effect: the connection's general path (``Reads.settle``) answers it. ``tests/agent/server/
test_hit.py`` holds the two to one contract. The twin remembers each request it answered, under
the head memo's own key for it (``LeanRead.request``), with the cache entry it answered from: it
answers those bytes again from that record while the entry is the cache's (``_Entry.gone``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Protocol

from secrets_agent.lookup.cache import CacheState
from secrets_agent.ops.metrics import Metrics
from secrets_agent.server.lean import LeanRead, Renderer
from secrets_agent.server.memo import Generations
from secrets_agent.server.reads import HEADERS, NOT_FOUND, Caller, Reads

log = logging.getLogger(__name__)

PASS, KEEP, CLOSE = 0, 1, 2  # not answered here; answered; answered, and close the connection


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...


class Answering(Protocol):
    """What a connection calls first with each request (``Hit`` or its compiled twin)."""

    def __call__(self, caller: Caller, data: bytes, transport: Writer) -> int: ...
    def answer(self, caller: Caller, head: LeanRead, transport: Writer) -> int: ...


class Hit:
    """A plain cached read, answered and written; ``PASS`` for anything else."""

    def __init__(
        self,
        memo: Generations[bytes, LeanRead | None],
        reads: Reads,
        renderer: Renderer,
        metrics: Metrics,
        size: int = 8192,
    ) -> None:
        self._reads, self._renderer, self._metrics = reads, renderer, metrics
        # What the compiled twin reads once, at its construction.
        self.memo = memo
        self.current, self.audit = reads.context.current, reads.context.audit
        self.tally, self.histogram, self.wall = (
            metrics.tally,
            metrics.request_latency,
            renderer.wall,
        )
        self.heads = (
            renderer.head(200, HEADERS[CacheState.HIT]),
            renderer.head(404, HEADERS[CacheState.NEGATIVE]),
        )
        self.not_found = NOT_FOUND
        self.read_counters, self.avoided_counter = metrics.read_counters, metrics.avoided_counter
        # The compiled twin remembers which backends each known miss spares (``spared_at``),
        # in two generations of ``size // 2`` per service, as ``Generations`` does.
        self.size = size

    def __call__(self, caller: Caller, data: bytes, transport: Writer) -> int:
        """Answer ``data`` if it is a whole request head seen before, for a plain cached read."""
        head = self.memo.young.get(data)
        return PASS if head is None else self.answer(caller, head, transport)

    def answer(self, caller: Caller, head: LeanRead, transport: Writer) -> int:
        """Answer a parsed read if it is plain and the cache holds it fresh."""
        started = time.perf_counter()
        read = head.read
        result = self._reads.plain(caller, read)
        if result is None:
            return PASS
        status, body = self._reads.body(read, result)
        self._metrics.answered(head.kind_label, status, time.perf_counter() - started)
        keep_alive = head.keep_alive
        headers = HEADERS[result.state]
        transport.write(self._renderer.parts(status, headers, int(result.age), body, keep_alive))
        return KEEP if keep_alive else CLOSE


def make_hit(
    memo: Generations[bytes, LeanRead | None],
    reads: Reads,
    renderer: Renderer,
    metrics: Metrics,
    size: int = 8192,
) -> Answering:
    """The compiled ``Hit`` where it was built and is not turned off, else ``Hit`` itself."""
    reference = Hit(memo, reads, renderer, metrics, size)
    if os.environ.get("SECRETS_AGENT_NO_EXTENSIONS"):
        log.info("cached reads on the reference read path: SECRETS_AGENT_NO_EXTENSIONS is set")
        return reference
    try:
        from secrets_agent.server._hit import Hit as Compiled
    except ImportError:  # installed without a C compiler at hand
        log.warning(
            "the compiled read path (secrets_agent.server._hit) is not built in this install: "
            "cached reads cost about twice the CPU; reinstall where a C compiler is at hand"
        )
        return reference
    metrics.read_path = "compiled"
    compiled = Compiled(reference)
    metrics.tally.attach(compiled)  # it keeps its counts until the metrics are read
    return compiled
