"""The Unix socket: safe creation under a tight umask, and stale-file takeover."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

from secrets_agent.config.schema import ListenerConfig
from secrets_agent.config.validators import resolve_group, socket_path_problem
from secrets_agent.errors import StartupError

log = logging.getLogger(__name__)

MIN_BACKLOG = 1024


def bind_unix_socket(config: ListenerConfig) -> socket.socket:
    """Create the listening socket, replacing a stale file but never a live agent's socket."""
    path = Path(config.socket_path)
    gid = check_socket(config)
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o750, parents=True)
        check_directories(path.parent)
        _clear_stale(path)
    except OSError as exc:  # a directory the agent's user cannot make or read, a file on the way
        where = f" ({exc.filename})" if exc.filename and exc.filename != str(path) else ""
        raise StartupError(f"cannot listen on {path}: {exc.strerror}{where}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        # Bind under a tight umask so the socket is never briefly open wider than configured.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
            bound = True
        finally:
            os.umask(old_umask)
        os.chmod(path, config.mode)
        if gid != -1:
            os.chown(path, -1, gid)
        sock.listen(listen_backlog())
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if bound:
            path.unlink(missing_ok=True)  # ours, half set up: never leave a dead socket behind
        raise StartupError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


def check_socket(config: ListenerConfig) -> int:
    """What binding needs of this machine (``check-config`` asks too): the socket group's gid
    (-1: none set); a path the kernel can bind, where no other kind of file stands."""
    if reason := socket_path_problem(config.socket_path):  # a config built in code, unchecked
        raise StartupError(f"listener.socket_path {reason}")
    _refuse_other_files(Path(config.socket_path))
    return _resolve_group(config.socket_group) if config.socket_group else -1


def check_directories(directory: Path) -> None:
    """Refuse a socket directory (or any parent) another user could write to.

    Whoever can write there can replace the socket with their own and answer the clients.
    A sticky directory owned by us or root (like /tmp) is fine: others cannot rename or
    remove our entries in it.
    """
    me = os.geteuid()
    _check_links(directory.absolute(), me)
    for current in (directory.resolve(), *directory.resolve().parents):
        st = current.stat()
        owner_ok = st.st_uid in (me, 0)
        sticky = bool(st.st_mode & stat.S_ISVTX)
        others_write = bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
        if owner_ok and (not others_write or sticky):
            continue
        who = f"owner uid {st.st_uid}" if not owner_ok else f"mode {stat.S_IMODE(st.st_mode):04o}"
        raise StartupError(
            f"{current} can be written by other users ({who}): one of them could replace the "
            "socket; put listener.socket_path in a directory only the agent can write"
        )


def _check_links(directory: Path, me: int) -> None:
    """Refuse a symlink on the way that another user owns: they could point it elsewhere.

    Checking only where the path resolves today would miss it (a symlink in a sticky /tmp
    is its owner's to replace; ``stat`` follows it, ``lstat`` does not).
    """
    for current in (directory, *directory.parents):
        st = current.lstat()
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (me, 0):
            raise StartupError(
                f"{current} is a symlink owned by uid {st.st_uid}: that user could point it "
                "elsewhere; put listener.socket_path in a directory only the agent can write"
            )


def listen_backlog() -> int:
    """At least 1024, or the kernel's cap if higher: a burst of workers must not find it full."""
    try:
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        somaxconn = 0
    return max(MIN_BACKLOG, somaxconn)


def remove_socket_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _clear_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise _not_a_socket(path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("replacing stale socket %s left by an agent that is gone", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise StartupError(f"cannot check existing socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise StartupError(f"another agent is already listening on {path}; refusing to start")


def _refuse_other_files(path: Path) -> None:
    """A file at the path, or on the way to it, that binding could never replace or pass."""
    try:
        mode = path.lstat().st_mode
    except NotADirectoryError:
        raise StartupError(f"cannot listen on {path}: Not a directory") from None
    except OSError:  # absent (binding makes it), or hidden from this user but not the agent's
        return
    if not stat.S_ISSOCK(mode):
        raise _not_a_socket(path)


def _not_a_socket(path: Path) -> StartupError:
    return StartupError(f"{path} exists and is not a socket; refusing to replace it")


def _resolve_group(group: str) -> int:
    gid = resolve_group(group)
    if gid is None:
        raise StartupError("listener.socket_group: no such group")
    return gid
