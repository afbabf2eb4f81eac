"""The ``secrets-agent`` command's exit statuses (BSD ``sysexits.h``), one meaning each."""

from __future__ import annotations

NOT_FOUND = 1  # `get`: no backend has it; `probe`: not alive / not ready
EX_DATAERR = 65  # the agent refused the request as invalid (400: an id no backend can hold)
EX_UNAVAILABLE = 69  # the agent could not be reached, or the agent's dependencies are missing
EX_TEMPFAIL = 75  # the agent answered with an error of its own or its upstream's (5xx)
EX_PROTOCOL = 76  # the agent's answer is not one this command understands
EX_NOPERM = 77  # the agent denied the request (403)
EX_CONFIG = 78  # invalid configuration, or a backend that cannot start
CLOSED_STDOUT = 141  # stdout was closed before the output was written (as SIGPIPE: 128 + 13)


def for_answer(status: int) -> int:
    """The exit status for an agent's answer that is neither a value nor "not found"."""
    if status == 403:
        return EX_NOPERM
    if 400 <= status < 500:
        return EX_DATAERR
    if 500 <= status < 600:
        return EX_TEMPFAIL
    return EX_PROTOCOL
