"""A connection's polling for its answer (``spin``): on a real socket pair, with an injected
clock, so what the budget allows never depends on how busy the machine is."""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator

import pytest

from secrets_agent_client.spin import DONTWAIT, MAX_SPIN_US, Spin, spin_seconds


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 0.0
        self.step = step  # added on every reading: a poll that costs time

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def started(clock: Clock, budget: float = 1.0, left: float = float("inf")) -> Spin:
    """A connection's polling, its request just sent."""
    spin = Spin(budget, clock=clock)
    spin.start(left)
    return spin


def test_a_poll_waits_for_the_answer_while_its_budget_lasts(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    spin = started(Clock())  # the clock stands still: the budget never runs out
    later = threading.Timer(0.05, theirs.sendall, (b"answer",))
    later.start()
    view = memoryview(bytearray(64))
    try:
        assert spin.read(ours, view, 0) == 6
    finally:
        later.join()
    assert bytes(view[:6]) == b"answer"
    spin.answered()
    assert spin.quick


def test_a_poll_gives_up_at_its_budget_and_the_next_read_sleeps_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    clock = Clock(step=0.3)
    spin = started(clock)
    view = memoryview(bytearray(64))
    assert spin.read(ours, view, 0) == -1  # nothing came
    assert clock.now >= 1.0 and not spin.quick
    # A slow answer (a miss) turned polling off: the next read does not even look.
    theirs.sendall(b"late")
    spin.start()
    assert spin.read(ours, view, 0) == -1
    assert ours.recv(64) == b"late"  # left for the caller's sleeping read


def test_a_poll_ends_when_the_lookups_time_is_up_however_long_its_budget(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    clock = Clock(step=0.1)
    spin = started(clock, left=0.25)  # the lookup's timeout leaves it less than its budget
    assert spin.read(ours, memoryview(bytearray(8)), 0) == -1
    assert clock.now < 0.5


def test_polling_comes_back_once_an_answer_comes_within_the_budget() -> None:
    clock = Clock()
    spin = Spin(1.0, clock=clock)
    spin.quick = False
    spin.start()
    clock.now += 1.5
    spin.answered()
    assert not spin.quick  # still slow
    spin.start()
    clock.now += 0.5
    spin.answered()
    assert spin.quick


def test_a_peer_that_closed_is_read_as_the_end(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.close()
    assert started(Clock()).read(ours, memoryview(bytearray(8)), 0) == 0


def test_a_blocking_socket_is_polled_with_dontwait(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    ours.setblocking(True)  # the async transport's sockets: blocking, polled with MSG_DONTWAIT
    assert started(Clock(step=0.5)).read(ours, memoryview(bytearray(8)), DONTWAIT) == -1


def test_a_budget_of_zero_never_polls(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"there")
    spin = started(Clock(), budget=0.0)
    assert spin.read(ours, memoryview(bytearray(8)), 0) == -1
    spin.answered()
    assert not spin.quick


@pytest.mark.parametrize(
    ("given", "seconds"), [(0, 0.0), ("0", 0.0), (100, 100e-6), ("250.5", 250.5e-6)]
)
def test_spin_us_is_microseconds(given: float | str, seconds: float) -> None:
    assert math.isclose(spin_seconds(given), seconds)


@pytest.mark.parametrize("given", [-1, "x", "nan", float("inf"), MAX_SPIN_US + 1, None, ""])
def test_a_spin_us_out_of_range_is_refused_with_its_name(given: object) -> None:
    with pytest.raises(ValueError, match="spin_us must be a number of microseconds"):
        spin_seconds(given)  # type: ignore[arg-type]
