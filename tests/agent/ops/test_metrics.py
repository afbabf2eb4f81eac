"""What the metrics say a backend cost: calls made and avoided."""

from __future__ import annotations

from secrets_agent.ops.metrics import Metrics


def test_calls_made_leave_logins_out() -> None:
    metrics = Metrics()
    metrics.called("vault", "login", "error", 0.01)  # no manager bills a login per call
    metrics.called("vault", "login", "ok", 0.01)
    metrics.called("vault", "read", "ok", 0.01)
    metrics.called("vault", "read", "not_found", 0.01)
    metrics.called("other", "read", "ok", 0.01)
    assert metrics.calls_made("vault") == 2 and metrics.calls_made("other") == 1
    # /metrics still shows every call, logins included, by operation.
    assert (
        metrics.sample(
            "secrets_agent_upstream_api_calls_total",
            backend="vault",
            operation="login",
            result="ok",
        )
        == 1
    )
