"""One lookup: the service (hit? stale? single-flight), the encrypted cache, the chain."""
