"""The agent's own error types; upstream SDK exceptions are translated into these at the edge."""

from __future__ import annotations


class AgentError(Exception):
    """Base class for every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid; carries one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))

    def one_line(self) -> str:
        """The problems for a log record, which must stay one line (text logs, the journal)."""
        return "invalid configuration: " + "; ".join(self.problems)


class InvalidIdError(AgentError):
    """A requested id can never be a valid Airflow key."""


class BackendError(AgentError):
    """An upstream lookup failed; the message names the backend, never a value."""

    def __init__(self, backend: str, message: str) -> None:
        self.backend, self.reason = backend, message  # ``reason``: without the backend's name
        super().__init__(f"backend {backend!r}: {message}")


class TransientError(BackendError):
    """The upstream is temporarily unavailable; a cached value may be served stale."""


class DeniedError(BackendError):
    """The upstream refused access to this id; Airflow must not silently fall through."""


class ClosedError(AgentError):
    """A backend's threads or connections used after its close (a reload dropped it)."""


class StartupError(AgentError):
    """The agent cannot start (socket in use, backend unusable)."""


class AccessDeniedError(AgentError):
    """An ``[[access]]`` rule refuses this peer the read: answered before the cache is asked."""
