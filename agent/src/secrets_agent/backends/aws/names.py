"""What Secrets Manager and Parameter Store can hold; other names get ValidationException."""

from __future__ import annotations

from dataclasses import dataclass

from secrets_agent.backends.names import NameRules, PatternNames

# Secret names: 1-512 of letters, digits and /_+=.@- (CreateSecret refuses anything else).
SECRET_NAMES = PatternNames("[A-Za-z0-9/_+=.@-]", 512)
_PARAMETER_CHARS = PatternNames("[A-Za-z0-9_./-]", 1011)


@dataclass(frozen=True)
class ParameterNames(NameRules):
    """Parameter names: letters, digits and ``_.-/``, at most 1011 characters and 15 levels."""

    max_levels: int = 15

    def why_not(self, name: str) -> str | None:
        reason = _PARAMETER_CHARS.why_not(name)
        if reason:
            return reason
        if name.count("/") > self.max_levels:
            return f"more than {self.max_levels} levels"
        if "//" in name or name.endswith("/"):
            return "an empty level"
        return None


PARAMETER_NAMES = ParameterNames()
