"""Who may talk to the agent: uid/gid allow-lists checked against kernel peer credentials."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from dataclasses import dataclass

from secrets_agent.config.schema import ListenerConfig

_UCRED = struct.Struct("i2I")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }: ids unsigned
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python lacks the name
_MAX_GROUPS = 256  # what 1 KiB holds: the most Python's getsockopt reads
_NGROUPS_MAX = 65536  # Linux's limit on a process's supplementary groups


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Peer:
    """Ask the kernel who is on the other end (SO_PEERCRED): unforgeable by the client."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return Peer(*_UCRED.unpack(raw))


TeamMap = tuple[tuple[int, frozenset[str]], ...]


@dataclass(frozen=True)
class AccessPolicy:
    allowed_uids: frozenset[int]
    allowed_gids: frozenset[int]
    admin_uids: frozenset[int]
    team_uids: TeamMap = ()
    team_gids: TeamMap = ()
    status_uids: frozenset[int] = frozenset()

    @classmethod
    def from_config(cls, config: ListenerConfig) -> AccessPolicy:
        """Unset lists default to the agent's own uid and primary group."""
        uid, gid = os.getuid(), os.getgid()
        return cls(
            allowed_uids=_ids(config.allowed_uids, uid),
            allowed_gids=_ids(config.allowed_gids, gid),
            admin_uids=_ids(config.admin_uids, uid),
            team_uids=_teams(config.team_uids),
            team_gids=_teams(config.team_gids),
            status_uids=frozenset(config.status_uids),
        )

    def allows(self, peer: Peer, groups: frozenset[int]) -> bool:
        return peer.uid in self.allowed_uids or bool(({peer.gid} | groups) & self.allowed_gids)

    @property
    def binds_teams(self) -> bool:
        return bool(self.team_uids or self.team_gids)

    def may_ask_for(self, peer: Peer, groups: frozenset[int], team: str) -> bool:
        """With a team binding, only the teams bound to the peer's uid or one of its gids."""
        if not self.binds_teams:
            return True
        gids = {peer.gid} | groups
        return any(uid == peer.uid and team in teams for uid, teams in self.team_uids) or any(
            gid in gids and team in teams for gid, teams in self.team_gids
        )

    def is_admin(self, peer: Peer) -> bool:
        return peer.uid in self.admin_uids

    def may_view_status(self, peer: Peer) -> bool:
        return peer.uid in self.admin_uids or peer.uid in self.status_uids


def _teams(configured: dict[str, tuple[str, ...]]) -> TeamMap:
    return tuple((int(peer), frozenset(teams)) for peer, teams in configured.items())


def _ids(configured: tuple[int, ...] | None, default: int) -> frozenset[int]:
    return frozenset((default,) if configured is None else configured)


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """Supplementary groups of the peer, so ``SupplementaryGroups=`` on a worker unit works.

    All of them, or an ``OSError``: a peer seen in fewer groups than it is in would escape a
    deny rule on the others."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * _MAX_GROUPS)
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            return frozenset()  # no SO_PEERGROUPS (Linux < 4.13): primary gids only
        raw = _many_groups(sock.fileno())  # Python's getsockopt reads 1 KiB at most
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def groups_reported() -> bool:
    """Whether this kernel tells a socket's peer's supplementary groups (Linux >= 4.13)."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        left.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * _MAX_GROUPS)
    except OSError as exc:
        return exc.errno == errno.ERANGE  # there, but more groups than the buffer holds
    finally:
        left.close()
        right.close()
    return True


def _many_groups(fd: int) -> bytes:
    """A peer in more than 256 groups: libc's getsockopt, with room for Linux's most."""
    size = ctypes.c_uint32(4 * _NGROUPS_MAX)
    buffer = ctypes.create_string_buffer(size.value)
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's getsockopt
    if libc.getsockopt(fd, socket.SOL_SOCKET, _SO_PEERGROUPS, buffer, ctypes.byref(size)):
        code = ctypes.get_errno()
        raise OSError(code, f"SO_PEERGROUPS: {os.strerror(code)}")
    return buffer.raw[: size.value]
