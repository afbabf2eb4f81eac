"""The compiled twin of ``secrets_agent.server.hit.Hit`` (``_hit.c``)."""

from secrets_agent.server.hit import Hit as Reference
from secrets_agent.server.hit import Writer
from secrets_agent.server.lean import LeanRead
from secrets_agent.server.reads import Caller

class Hit:
    def __init__(self, reference: Reference) -> None: ...
    def __call__(self, caller: Caller, data: bytes, transport: Writer) -> int: ...
    def answer(self, caller: Caller, head: LeanRead, transport: Writer) -> int: ...
    def drain(self) -> None: ...

def native_aes(allowed: bool | None = None, /) -> bool:
    """Whether hits decrypt with the CPU's AES instructions; ``allowed`` sets it first."""
