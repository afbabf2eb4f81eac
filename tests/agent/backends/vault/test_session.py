"""VaultSession's schedule with scripted token operations and a clock the test moves."""

from __future__ import annotations

import pytest

from secrets_agent.backends.base import BackendContext
from secrets_agent.backends.vault.auth import Lease
from secrets_agent.backends.vault.errors import TokenRejected
from secrets_agent.backends.vault.options import VaultOptions
from secrets_agent.backends.vault.session import IDLE, VaultSession
from secrets_agent.errors import BackendError, TransientError
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock


class ScriptedOps:
    """Token operations answering from queues: a Lease, or an error to raise."""

    def __init__(self) -> None:
        self.logins: list[Lease | BackendError] = []
        self.renewals: list[Lease | BackendError] = []
        self.calls: list[str] = []

    async def login(self) -> Lease:
        return self._next("login", self.logins)

    async def renew(self) -> Lease:
        return self._next("renew", self.renewals)

    def _next(self, name: str, queue: list[Lease | BackendError]) -> Lease:
        self.calls.append(name)
        answer = queue.pop(0)
        if isinstance(answer, BackendError):
            raise answer
        return answer


def lease(ttl: float, renewable: bool = True) -> Lease:
    return Lease(token="t", ttl=ttl, renewable=renewable)


DOWN = TransientError("v", "cannot connect to Vault")


class Fixture:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics()
        self.ops = ScriptedOps()
        opts = VaultOptions(url="http://127.0.0.1:1", backoff_initial=1.0, backoff_max=8.0)
        # rng=1.0: jitter at its top, so the backoff is exactly the doubling bound.
        self.session = VaultSession(
            "v", self.ops, opts, BackendContext(self.metrics, self.clock), rng=lambda: 1.0
        )

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"backend": "v", **labels}) or 0.0


async def test_renews_at_two_thirds_of_the_ttl() -> None:
    f = Fixture()
    f.ops.logins.append(lease(90))
    f.ops.renewals.append(lease(90))
    await f.session.login()
    assert await f.session.step() == 60
    f.clock.advance(59)
    await f.session.step()
    assert f.ops.calls == ["login"]
    f.clock.advance(1)
    assert await f.session.step() == 60
    assert f.ops.calls == ["login", "renew"]
    assert f.sample("secrets_agent_auth_token_ttl_seconds") == 90


async def test_a_capped_renewal_means_log_in_next_time() -> None:
    f = Fixture()
    f.ops.logins += [lease(90), lease(90)]
    f.ops.renewals.append(lease(30))  # max TTL is near: Vault granted less than asked
    await f.session.login()
    f.clock.advance(60)
    await f.session.step()
    f.clock.advance(20)
    await f.session.step()
    assert f.ops.calls == ["login", "renew", "login"]


async def test_rejected_renewal_logs_in_again() -> None:
    f = Fixture()
    f.ops.logins += [lease(90), lease(90)]
    f.ops.renewals.append(TokenRejected("v", "revoked"))
    await f.session.login()
    f.clock.advance(60)
    await f.session.step()
    assert f.ops.calls == ["login", "renew", "login"]
    assert f.session.authenticated


async def test_transient_renewal_failure_keeps_the_token_and_retries() -> None:
    f = Fixture()
    f.ops.logins.append(lease(90))
    f.ops.renewals += [DOWN, lease(90)]
    await f.session.login()
    f.clock.advance(60)
    assert await f.session.step() == 1.0  # retry after the first backoff step
    assert f.session.authenticated
    f.clock.advance(1)
    await f.session.step()
    assert f.ops.calls == ["login", "renew", "renew"]


async def test_login_failures_back_off_exponentially_up_to_the_bound() -> None:
    f = Fixture()
    f.ops.logins += [DOWN] * 6 + [lease(90)]
    delays = []
    for _ in range(6):
        await f.session.login()
        delay = await f.session.step()
        delays.append(delay)
        f.clock.advance(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    await f.session.step()
    assert f.session.authenticated
    assert f.sample("secrets_agent_auth_attempts_total", result="failure") == 6
    assert f.sample("secrets_agent_authenticated") == 1


async def test_a_failed_login_is_one_line_naming_the_backend_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = Fixture()
    f.ops.logins.append(DOWN)
    with caplog.at_level("WARNING", logger="secrets_agent.backends.vault"):
        await f.session.login()
    [line] = [r.getMessage() for r in caplog.records]
    assert line == "backend 'v': login failed (cannot connect to Vault); retrying in 1.00s"


async def test_jitter_stays_within_half_to_full_backoff() -> None:
    f = Fixture()
    f.session._rng = lambda: 0.0
    f.ops.logins.append(DOWN)
    await f.session.login()
    assert await f.session.step() == 0.5


async def test_ensure_token_waits_for_the_backoff_and_reports_why() -> None:
    f = Fixture()
    f.ops.logins += [DOWN, lease(90)]
    with pytest.raises(TransientError, match="cannot connect to Vault"):
        await f.session.ensure_token()
    with pytest.raises(TransientError):
        await f.session.ensure_token()  # still inside the backoff: no new attempt
    assert f.ops.calls == ["login"]
    f.clock.advance(1)
    await f.session.ensure_token()
    assert f.ops.calls == ["login", "login"]


async def test_expired_token_is_dropped() -> None:
    f = Fixture()
    f.ops.logins += [lease(90, renewable=False), DOWN, DOWN]
    await f.session.login()
    f.clock.advance(60)
    await f.session.step()  # not renewable: a fresh login is due, and it fails
    assert f.session.authenticated  # the old token still has 30 s
    f.clock.advance(30)
    await f.session.step()
    assert f.sample("secrets_agent_authenticated") == 0  # dropped at expiry, login failed again
    assert f.ops.calls == ["login", "login", "login"]


async def test_non_expiring_token_needs_no_maintenance() -> None:
    f = Fixture()
    f.ops.logins.append(lease(0, renewable=False))
    await f.session.login()
    assert await f.session.step() == IDLE
    assert f.sample("secrets_agent_auth_token_ttl_seconds") == 0
