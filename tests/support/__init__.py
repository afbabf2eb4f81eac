"""Helpers every test folder shares: real servers on loopback, the real agent, fixed paths."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
