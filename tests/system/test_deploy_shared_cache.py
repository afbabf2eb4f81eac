"""The in-cluster Valkey example: chart values that suit a cache, and an agent config that loads."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from secrets_agent.config.loader import parse_config
from support import ROOT

EXAMPLE = ROOT / "deploy" / "kubernetes" / "shared-cache-valkey.yaml"


def test_valkey_values_and_the_agent_config_fit_together() -> None:
    values, config_map = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert values["auth"]["enabled"] is True and values["tls"]["enabled"] is True
    assert values["primary"]["persistence"]["enabled"] is False
    assert "--maxmemory-policy volatile-ttl" in values["primary"]["extraFlags"]
    config = parse_config(tomllib.loads(config_map["data"]["config.toml"]), base_dir=Path("/"))
    shared = config.shared_cache
    assert shared.enabled and shared.url.startswith("rediss://")
    assert shared.password_file and shared.ca_file and not shared.password
    assert config.encryption.key_file  # the fleet's key, never a random one
