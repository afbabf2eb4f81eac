"""Backends: where secrets really live. SDK exceptions never leave this package."""
