"""The [shared_cache] section: off by default, every key checked, one message per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from secrets_agent.config.loader import load_config
from secrets_agent.errors import ConfigError
from support.helpers import write_config


@pytest.fixture(autouse=True)
def _files(tmp_path: Path) -> None:
    """The files the configs below name: a file the agent reads must be there to load."""
    for name in ("ca.pem", "store.pw", "f"):
        (tmp_path / name).touch()


def problems(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, body))
    return info.value.problems


def test_off_by_default(tmp_path: Path) -> None:
    shared = load_config(write_config(tmp_path, "")).shared_cache
    assert not shared.enabled and shared.key_prefix == "airflow-secrets-agent:"


def test_a_full_section_loads_with_paths_resolved(tmp_path: Path) -> None:
    body = """
        [shared_cache]
        url = "rediss://valkey.example:6380/2"
        ca_file = "ca.pem"
        username = "agent"
        password_file = "store.pw"
        key_prefix = "fleet-a:"
        namespace = "prod"
        timeout = 0.5
        lock_ttl = 5
        lock_wait = 1
        breaker_failures = 2
        breaker_cooldown = 10
        log_interval = 30
    """
    shared = load_config(write_config(tmp_path, body)).shared_cache
    assert shared.enabled and shared.ca_file == str(tmp_path / "ca.pem")
    assert shared.password_file == str(tmp_path / "store.pw")
    assert (shared.lock_ttl, shared.lock_wait, shared.breaker_failures) == (5.0, 1.0, 2)


def test_a_cluster_from_seed_nodes_with_tls(tmp_path: Path) -> None:
    body = """
        [shared_cache]
        url = "rediss+cluster://node-a.example:6379,node-b.example:6379/0"
        ca_file = "ca.pem"
        username = "agent"
        password_file = "store.pw"
    """
    shared = load_config(write_config(tmp_path, body)).shared_cache
    assert shared.enabled and shared.ca_file == str(tmp_path / "ca.pem")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('url = "http://x"', "shared_cache.url: must be a redis://"),
        ('url = "redis+sentinel://h1:26379"', "shared_cache.url: must look like redis+sentinel"),
        ('url = "redis+sentinel://h1/m"', "shared_cache.url: must look like redis+sentinel"),
        ('url = "redis://user:pw@host:6379"', "shared_cache.url: must not hold credentials"),
        ('url = "redis://h:6379/0?password=pw-in-url"', "shared_cache.url: must not hold a query"),
        (
            'url = "redis+sentinel://h1:26379/m?password=pw-in-url"',
            "shared_cache.url: must not hold a query",
        ),
        ('url = "unix:///run/redis.sock?password=pw-in-url"', "shared_cache.url: must not hold"),
        ('url = "redis+cluster://h1:7000#pw-in-url"', "shared_cache.url: must not hold a query"),
        ("timeout = 0", "shared_cache.timeout: must be >= 0.01"),
        ("lock_ttl = 1000", "shared_cache.lock_ttl: must be <= 300.0"),
        ("breaker_failures = 0", "shared_cache.breaker_failures: must be >= 1"),
        ('key_prefix = "a b"', "shared_cache.key_prefix: must be 1-64 letters"),
        ("lock_wait = 20\nlock_ttl = 10", "shared_cache.lock_wait: must not exceed lock_ttl"),
        ('url = "redis://h"\nca_file = "ca.pem"', "shared_cache.ca_file: needs a rediss://,"),
        ('url = "redis+cluster://h1"', "shared_cache.url: must look like redis+cluster"),
        ('url = "redis+cluster://h1:7000/2"', "shared_cache.url: a cluster has only database 0"),
        ('url = "redis+cluster://h1:7000/x"', "shared_cache.url: must look like redis+cluster"),
        ('url = "redis://h:notaport/0"', "shared_cache.url: must have a port in 1-65535"),
        ('url = "redis://h:99999/0"', "shared_cache.url: must have a port in 1-65535"),
        ('url = "redis://:6379/0"', "shared_cache.url: must name a host"),
        ('url = "redis://h:6379/0;password=pw-in-url"', "shared_cache.url: must end in the"),
        ('url = "redis://h:6379/pw-in-url"', "shared_cache.url: must end in the database"),
        ('url = "redis://h:6379/0/1"', "shared_cache.url: must end in the database"),
        ('url = "unix://run/redis.sock"', "shared_cache.url: must name an absolute socket"),
        ('url = "rediss+cluster://h1:6379,h2:99999"', "shared_cache.url: h2:99999 must have"),
        ('url = "redis+sentinel://h1:0/m/0"', "shared_cache.url: h1:0 must have a port"),
        ('password = "x"\npassword_file = "f"', "shared_cache.password: set password or"),
        ("hosts = []", "shared_cache.hosts: unknown key"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, body: str, expected: str) -> None:
    [problem] = problems(tmp_path, f"[shared_cache]\n{body}\n")
    assert problem.startswith(expected)
    assert "pw-in-url" not in problem


@pytest.mark.parametrize(
    "url",
    [
        "redis://valkey.example",
        "redis://valkey.example/",
        "rediss://10.0.0.3:6380/15",
        "redis://valkey.example:6379/0/",
        "redis://[::1]:6379/0",
        "redis+cluster://h1:7000,h2.example:7001",
    ],
)
def test_server_urls(tmp_path: Path, url: str) -> None:
    body = f'[shared_cache]\nurl = "{url}"\n'
    assert load_config(write_config(tmp_path, body)).shared_cache.url == url


def test_a_unix_socket_url_may_name_its_database(tmp_path: Path) -> None:
    body = '[shared_cache]\nurl = "unix:///run/redis/redis.sock?db=2"\n'
    assert load_config(write_config(tmp_path, body)).shared_cache.url.endswith("?db=2")


def test_sentinel_urls(tmp_path: Path) -> None:
    url = "rediss+sentinel://s1:26379,s2.example:26380/mymaster/3"
    body = f'[shared_cache]\nurl = "{url}"\nca_file = "ca.pem"\n'
    assert load_config(write_config(tmp_path, body)).shared_cache.url == url


def test_credentials_never_appear_in_problems(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, '[shared_cache]\nurl = "redis://u:hunter2-secret@h"\n')
    assert "hunter2" not in problem


def test_an_inline_password_stays_out_of_the_repr(tmp_path: Path) -> None:
    """A printout of the config (a traceback, a failed assertion) shows no password."""
    body = '[shared_cache]\nurl = "redis://127.0.0.1:6379/0"\npassword = "pw-canary-51d0"\n'
    config = load_config(write_config(tmp_path, body))
    assert config.shared_cache.password == "pw-canary-51d0"
    assert "pw-canary-51d0" not in repr(config)
