"""Polling a connection briefly for its answer before sleeping on it.

A cached answer comes back tens of µs after the request. A client that sleeps for it is woken
by the agent's write: on another CPU that is an inter-processor interrupt and, if that CPU had
gone idle, its exit from idle, tens of µs on a VM, charged to both sides. A client that polls
its socket for those µs is not asleep, so the agent's write wakes nobody: the lookup takes about
half as long across CPUs, the agent spends less CPU on it, and the worker no more (the wake-up
it skips cost what the polling does). Between polls it yields its CPU to anything else runnable
there (the agent itself, when both share one). An answer that does not come within the budget
(a miss, a busy agent) is slept for, and the connection stops polling until an answer comes
within the budget again, so slow answers cost the budget once, not every time.
"""

from __future__ import annotations

import _socket
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# Long enough for a cached answer from an agent on another CPU (30-60 µs on a VM), short
# against a miss (a millisecond or more).
SPIN_US = 100.0
MAX_SPIN_US = 10_000.0  # more is sleeping's job
DONTWAIT: int = getattr(_socket, "MSG_DONTWAIT", 0)
_give_way: Callable[[], None] = getattr(os, "sched_yield", None) or (lambda: None)


def spin_seconds(micros: float | str) -> float:
    """``spin_us`` as seconds, checked where it is given: a number (or numeric text, as Airflow
    passes kwargs) from 0 (never poll) to ``MAX_SPIN_US``."""
    try:
        value = float(micros)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value <= MAX_SPIN_US:  # NaN fails every comparison
        raise ValueError(
            f"spin_us must be a number of microseconds from 0 to {MAX_SPIN_US:g}, not {micros!r}"
        )
    return value / 1e6


class Spin:
    """One connection's polling: its budget, and whether its last answer came within it."""

    __slots__ = ("budget", "clock", "quick", "started", "until")

    def __init__(self, budget: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget = budget
        self.clock = clock
        self.quick = budget > 0
        self.started = self.until = 0.0

    def start(self, left: float = float("inf")) -> None:
        """The request is sent: its answer's time counts from here, and polling for it ends
        within ``left`` seconds (what the lookup's timeout leaves it)."""
        self.started = self.clock()
        # The timeout bounds the whole lookup: a budget longer than what is left of it must not
        # keep polling an agent that is not answering past the lookup's deadline.
        self.until = self.started + min(self.budget, left)

    def read(self, sock: _socket.socket, view: memoryview, flags: int) -> int:
        """Bytes read into ``view`` (0: the peer closed) within the budget and the time ``start``
        was given, polling with ``flags`` (the socket must not block on them); -1 when nothing
        came or polling is off."""
        if not self.quick:
            return -1
        until = self.until
        while True:
            try:
                return sock.recv_into(view, 0, flags)
            except BlockingIOError:
                if self.clock() >= until:
                    self.quick = False
                    return -1
                _give_way()

    def answered(self) -> None:
        """The whole answer is in: poll for the next one only if this one came in time."""
        if self.budget:
            self.quick = self.clock() - self.started <= self.budget
