"""Fernet key sources: file, environment variable, systemd credential."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from secrets_agent.config.schema import EncryptionConfig
from secrets_agent.errors import StartupError
from secrets_agent.lookup.cipher import Cipher, load_keys


def test_no_source_means_a_random_key() -> None:
    assert load_keys(EncryptionConfig(), environ={}) == []
    cipher = Cipher([])
    assert cipher.decrypt(cipher.encrypt("x")) == "x"


def test_keys_from_every_source_in_order(tmp_path: Path) -> None:
    k1, k2, k3, k4 = (Fernet.generate_key().decode() for _ in range(4))
    (tmp_path / "key").write_text(f"{k1}\n{k2}\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "agent-key").write_text(k4)
    config = EncryptionConfig(
        key_file=str(tmp_path / "key"), key_env="AGENT_KEY", credential="agent-key"
    )
    environ = {"AGENT_KEY": k3, "CREDENTIALS_DIRECTORY": str(creds)}
    assert load_keys(config, environ) == [k.encode() for k in (k1, k2, k3, k4)]


def test_invalid_key_is_reported_without_its_content(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("not-a-real-key-s3cret\n")
    with pytest.raises(StartupError) as info:
        load_keys(EncryptionConfig(key_file=str(tmp_path / "key")), environ={})
    assert "key #1 is not a valid Fernet key" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("config", "environ", "message"),
    [
        (EncryptionConfig(key_env="NOPE"), {}, "NOPE is unset"),
        (EncryptionConfig(credential="k"), {}, "CREDENTIALS_DIRECTORY is unset"),
        (
            EncryptionConfig(key_file="/nonexistent/key"),
            {},
            "encryption.key_file: cannot read key file",
        ),
        (EncryptionConfig(key_env="EMPTY"), {"EMPTY": " \n"}, "hold no key"),
    ],
)
def test_unusable_sources_stop_startup(
    config: EncryptionConfig, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(StartupError, match=message):
        load_keys(config, environ)
