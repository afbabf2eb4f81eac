"""Who may talk to the agent: uid/gid allow-lists checked against kernel peer credentials."""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from secrets_agent.config import ListenerConfig
from secrets_agent.server.listener import Peer, peer_credentials

_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python lacks the name
_MAX_GROUPS = 256


@dataclass(frozen=True)
class AccessPolicy:
    allowed_uids: frozenset[int]
    allowed_gids: frozenset[int]
    admin_uids: frozenset[int]

    @classmethod
    def from_config(cls, config: ListenerConfig) -> AccessPolicy:
        """Unset lists default to the agent's own uid and primary group."""
        uid, gid = os.getuid(), os.getgid()
        return cls(
            allowed_uids=_ids(config.allowed_uids, uid),
            allowed_gids=_ids(config.allowed_gids, gid),
            admin_uids=_ids(config.admin_uids, uid),
        )

    def allows(self, peer: Peer, groups: frozenset[int]) -> bool:
        return peer.uid in self.allowed_uids or bool(({peer.gid} | groups) & self.allowed_gids)

    def is_admin(self, peer: Peer) -> bool:
        return peer.uid in self.admin_uids


def _ids(configured: tuple[int, ...] | None, default: int) -> frozenset[int]:
    return frozenset((default,) if configured is None else configured)


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """Supplementary groups of the peer, so ``SupplementaryGroups=`` on a worker unit works."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * _MAX_GROUPS)
    except OSError:
        return frozenset()
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


__all__ = ["AccessPolicy", "Peer", "peer_credentials", "peer_groups"]
