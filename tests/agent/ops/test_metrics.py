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


def test_calls_made_are_the_managers_own_calls_not_sts_or_the_feeds_queues() -> None:
    metrics = Metrics()
    metrics.called("sm", "GetSecretValue", "ok", 0.01)
    metrics.called("sm", "DescribeSecret", "ok", 0.01)
    metrics.called("sm", "BatchGetSecretValue", "ok", 0.01)
    metrics.called("sm", "AssumeRole", "ok", 0.01)  # STS: free
    # A change feed's queue or subscription: SQS, Pub/Sub, a Storage queue bill these.
    for operation in ("ReceiveMessage", "DeleteMessageBatch", "Pull", "Acknowledge"):
        metrics.called("sm", operation, "ok", 0.01)
    metrics.called("kv", "GetSecret", "ok", 0.01)
    metrics.called("kv", "ReceiveMessages", "ok", 0.01)
    metrics.called("kv", "DeleteMessage", "ok", 0.01)
    metrics.price("sm", 0.05 / 10_000)
    metrics.price("kv", 0.03 / 10_000)
    assert (metrics.calls_made("sm"), metrics.calls_made("kv")) == (3, 1)
    cost = "secrets_agent_upstream_api_cost_dollars"
    assert metrics.sample(cost, backend="sm", calls="made") == 3 * 0.05 / 10_000
    assert metrics.sample(cost, backend="kv", calls="made") == 0.03 / 10_000
    total = "secrets_agent_upstream_api_calls_total"
    assert metrics.sample(total, backend="sm", operation="ReceiveMessage", result="ok") == 1
