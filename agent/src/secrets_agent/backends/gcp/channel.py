"""The gRPC channel every Google client of a backend uses: its credentials, CA and backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def secure_channel(
    transport: Any, host: str, credentials: Any, ca_file: str, backoff_max: float
) -> Any:
    """A TLS channel to ``host`` built by the GAPIC ``transport`` class (its own defaults)."""
    import grpc

    roots = Path(ca_file).read_bytes() if ca_file else None
    return transport.create_channel(
        host,
        credentials=credentials,
        scopes=SCOPES,
        ssl_credentials=grpc.ssl_channel_credentials(root_certificates=roots),
        # gRPC's default reconnect backoff grows to 2 minutes: too slow after a blip.
        options=[
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(backoff_max * 1000)),
        ],
    )
