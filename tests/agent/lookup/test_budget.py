"""Refresh-now's budget: per peer and for the agent, refilled over a minute."""

from __future__ import annotations

from secrets_agent.lookup.budget import Budget
from support.helpers import FakeClock


def test_a_peer_gets_its_burst_then_one_per_refill_and_the_agent_caps_them_all() -> None:
    clock = FakeClock()
    budget = Budget(per_peer=3, total=5, clock=clock)
    assert [budget.take(1) for _ in range(4)] == [True, True, True, False]
    assert [budget.take(2) for _ in range(3)] == [True, True, False]  # the agent's 5 are spent
    clock.advance(20)  # a third of a minute: one back for peer 1, ~1.7 for the agent
    assert budget.take(1) and not budget.take(1)
    assert not budget.take(3)  # a new peer, but the agent's bucket is empty
    clock.advance(60)
    assert [budget.take(4) for _ in range(4)] == [True, True, True, False]


def test_no_peer_counts_only_against_the_agent() -> None:
    budget = Budget(per_peer=1, total=2, clock=FakeClock())
    assert [budget.take(None) for _ in range(3)] == [True, True, False]
