"""The read audit on its own: JSON lines, rotation, reopen, rate bound, write failures."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from secrets_agent.config.loader import parse_config
from secrets_agent.errors import ConfigError
from secrets_agent.ops.audit import AuditLog, AuditSettings, Read
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock

READ = Read(1000, 1001, 4242, "connection", "aws_default", None, "hit", "vault")


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def make(
    path: Path, clock: FakeClock | None = None, **settings: object
) -> tuple[AuditLog, Metrics]:
    metrics = Metrics()
    options = {"output": "file", "path": str(path)} | settings
    audit = AuditLog(
        AuditSettings(**options),  # type: ignore[arg-type]
        metrics,
        wall=lambda: 1_700_000_000.25,
        clock=clock or FakeClock(),
    )
    return audit, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_off_by_default_writes_nothing(tmp_path: Path) -> None:
    audit = AuditLog(AuditSettings(path=str(tmp_path / "audit.log")), Metrics())
    audit.record(READ)
    assert not audit.enabled and list(tmp_path.iterdir()) == []


def test_one_json_line_per_read_with_who_what_and_how(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit, metrics = make(path)
    audit.record(READ)
    audit.record(Read(0, 0, 7, "variable", "k", "team_a", "denied", None))
    audit.close()
    assert lines(path) == [
        {
            "time": "2023-11-14T22:13:20.250Z",
            "event": "read",
            "uid": 1000,
            "gid": 1001,
            "pid": 4242,
            "kind": "connection",
            "id": "aws_default",
            "team": None,
            "result": "hit",
            "backend": "vault",
        },
        {
            "time": "2023-11-14T22:13:20.250Z",
            "event": "read",
            "uid": 0,
            "gid": 0,
            "pid": 7,
            "kind": "variable",
            "id": "k",
            "team": "team_a",
            "result": "denied",
            "backend": None,
        },
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sample(metrics, "secrets_agent_audit_events_total", result="denied") == 1


def test_rotates_by_size_keeping_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit, _ = make(path, max_bytes=1000, backups=2)
    for _ in range(30):
        audit.record(READ)
    audit.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 1000
    total = sum(len(lines(tmp_path / n)) for n in names)
    assert 10 < total < 30  # the oldest lines went with the oldest backup


def test_reconfigure_reopens_after_logrotate_moved_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit, _ = make(path)
    audit.record(READ)
    path.rename(tmp_path / "audit.log.1")
    audit.record(READ)  # still the moved file, until the reopen
    audit.reconfigure(AuditSettings(output="file", path=str(path)))
    audit.record(READ)
    audit.close()
    assert len(lines(tmp_path / "audit.log.1")) == 2 and len(lines(path)) == 1


def test_rate_is_bounded_and_the_dropped_reads_are_summarised(tmp_path: Path) -> None:
    path, clock = tmp_path / "audit.log", FakeClock()
    audit, metrics = make(path, clock, rate=5.0)
    for _ in range(20):
        audit.record(READ)
    assert len(lines(path)) == 5
    assert sample(metrics, "secrets_agent_audit_dropped_total", reason="rate") == 15
    clock.advance(1.0)
    audit.record(READ)
    audit.close()
    tail = lines(path)[5:]
    assert [e["event"] for e in tail] == ["dropped", "read"]
    assert tail[0]["count"] == 15


def test_an_unwritable_file_logs_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        audit, metrics = make(tmp_path / "missing-dir" / "audit.log")
        for _ in range(3):
            audit.record(READ)
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert sample(metrics, "secrets_agent_audit_dropped_total", reason="error") == 3


def test_config_needs_a_file_for_file_output_and_rejects_unknown_outputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"audit": {"output": "file"}}, base_dir=tmp_path)
    assert info.value.problems == ['audit.file: is required when output = "file"']
    with pytest.raises(ConfigError) as info:
        parse_config({"audit": {"output": "syslog", "rate_limit": 0}}, base_dir=tmp_path)
    assert info.value.problems == [
        "audit.output: must be one of off, file, stderr",  # names the choice, never quotes it
        "audit.rate_limit: must be >= 1.0, got 0.0",
    ]
    config = parse_config({"audit": {"output": "file", "file": "a.log"}}, base_dir=tmp_path)
    assert config.audit.file == str(tmp_path / "a.log")


def test_dropped_summaries_share_the_rate_and_every_read_is_accounted_for(
    tmp_path: Path,
) -> None:
    path, clock = tmp_path / "audit.log", FakeClock()
    audit, _ = make(path, clock, rate=50.0)
    for _ in range(3000):  # 3 s of hammering, a read every millisecond
        audit.record(READ)
        clock.advance(0.001)
    audit.close()
    events = lines(path)
    assert len(events) <= 50 + 3 * 50  # one second's burst, then the rate: summaries included
    reads = [e for e in events if e["event"] == "read"]
    dropped = sum(int(str(e["count"])) for e in events if e["event"] == "dropped")
    assert len(reads) + dropped == 3000  # exact: nothing lost without a trace


def test_one_peers_burst_cannot_keep_another_peers_read_out(tmp_path: Path) -> None:
    path, clock = tmp_path / "audit.log", FakeClock()
    audit, _ = make(path, clock, rate=50.0)
    for _ in range(3000):  # a burst by uid 1000 (all at once: the worst case)
        audit.record(READ)
    audit.record(Read(2000, 2000, 7, "variable", "db_password", None, "hit", "vault"))
    audit.close()
    theirs = [e for e in lines(path) if e.get("uid") == 2000]
    assert [(e["event"], e["id"]) for e in theirs] == [("read", "db_password")]


def test_a_dropped_denied_read_is_never_silent(tmp_path: Path) -> None:
    path, clock = tmp_path / "audit.log", FakeClock()
    audit, metrics = make(path, clock, rate=5.0)
    for _ in range(5):
        audit.record(READ)
    denied = Read(1000, 1001, 4242, "variable", "db_password", None, "denied", None)
    audit.record(denied)  # over its share: not written now...
    assert sample(metrics, "secrets_agent_audit_dropped_total", reason="rate") == 1
    clock.advance(1.0)  # ...but summarised once the peer has a token again, even if it is gone
    audit.record(Read(2000, 2000, 7, "variable", "other", None, "hit", "vault"))
    audit.close()
    summaries = [e for e in lines(path) if e["event"] == "dropped"]
    assert summaries == [
        {"time": summaries[0]["time"], "event": "dropped", "uid": 1000, "count": 1, "denied": 1}
    ]


def test_a_symlinked_audit_file_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "audit.log").symlink_to(victim)
    with caplog.at_level(logging.ERROR):
        audit, metrics = make(tmp_path / "audit.log")
        audit.record(READ)
        audit.close()
    assert victim.read_text() == "keep\n"
    assert sample(metrics, "secrets_agent_audit_dropped_total", reason="error") == 1
    assert any("cannot" in r.getMessage() for r in caplog.records)


def test_an_existing_audit_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("")
    path.chmod(0o644)  # left world-readable by someone
    audit, _ = make(path)
    audit.record(READ)
    audit.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(lines(path)) == 1
