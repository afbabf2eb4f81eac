"""The socket's directory: a symlink on the way that another user owns is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secrets_agent.errors import StartupError
from secrets_agent.server.listener import check_directories

OTHER = 4666


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a symlink as another uid")
def test_a_parent_that_is_another_users_symlink_is_refused(short_tmp: Path) -> None:
    sticky = short_tmp / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: anyone may create a link there, and only they replace it
    real = short_tmp / "real"
    (real / "run").mkdir(parents=True)
    link = sticky / "agent"
    link.symlink_to(real)
    check_directories(link / "run")  # ours (root's) link: fine
    os.lchown(link, OTHER, OTHER)
    with pytest.raises(StartupError, match=f"{link} is a symlink owned by uid {OTHER}"):
        check_directories(link / "run")
    check_directories(real / "run")  # where it points is fine on its own


def test_a_path_too_long_or_an_unknown_group_is_refused_before_binding(short_tmp: Path) -> None:
    """The checks ``check-config`` makes too (``check_socket``), with the same messages."""
    from secrets_agent.config.schema import ListenerConfig
    from secrets_agent.server.listener import bind_unix_socket, check_socket

    long_path = str(short_tmp / ("s" * 110))
    with pytest.raises(StartupError, match=r"listener\.socket_path is longer than the 107 bytes"):
        bind_unix_socket(ListenerConfig(socket_path=long_path))
    unknown = ListenerConfig(socket_path=str(short_tmp / "a.sock"), socket_group="no-such-grp")
    with pytest.raises(StartupError, match=r"listener\.socket_group: no such group"):
        bind_unix_socket(unknown)
    assert not (short_tmp / "a.sock").exists()
    assert check_socket(ListenerConfig(socket_group=str(os.getgid()))) == os.getgid()
    assert check_socket(ListenerConfig()) == -1


def test_a_socket_directory_that_cannot_be_made_or_read_is_a_startup_error(
    short_tmp: Path,
) -> None:
    """Not a traceback: e.g. a non-root agent on the default /run path, no RuntimeDirectory=."""
    from secrets_agent.config.schema import ListenerConfig
    from secrets_agent.server.listener import bind_unix_socket

    (short_tmp / "file").touch()
    for path in (short_tmp / "file" / "agent.sock", short_tmp / "file" / "run" / "agent.sock"):
        with pytest.raises(StartupError, match=f"cannot listen on {path}: Not a directory"):
            bind_unix_socket(ListenerConfig(socket_path=str(path)))
