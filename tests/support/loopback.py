"""The environment every test process runs in: loopback only, no cloud metadata probes."""

from __future__ import annotations

import os

_CLOSED = "http://127.0.0.1:9"  # a closed loopback port: outside traffic fails at once
_PROXY_KEYS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy")

LOOPBACK_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "NO_GCE_CHECK": "True",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    # Anything that still tries an outside HTTP(S) address goes to the closed port; loopback
    # itself is reached directly.
    "HTTP_PROXY": _CLOSED,
    "HTTPS_PROXY": _CLOSED,
    "http_proxy": _CLOSED,
    "https_proxy": _CLOSED,
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "no_proxy": "127.0.0.1,localhost,::1",
    "DO_NOT_TRACK": "1",
    "SCARF_ANALYTICS": "false",
}

_ORIGINAL = {key: os.environ.get(key) for key in _PROXY_KEYS}


def apply() -> None:
    os.environ.update(LOOPBACK_ENV)


def registry_env() -> dict[str, str]:
    """The environment for package installs (uv), the one step that talks to the registries."""
    env = dict(os.environ)
    # scripts/_uv.sh exports UV_PYTHON for the project's own venv; `uv pip` would take it as
    # the environment to install into (the machine's python3) instead of VIRTUAL_ENV.
    env.pop("UV_PYTHON", None)
    for key, value in _ORIGINAL.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
