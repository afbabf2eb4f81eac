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
