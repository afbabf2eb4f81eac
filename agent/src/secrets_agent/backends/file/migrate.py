"""Airflow's ``LocalFilesystemBackend`` kwargs as a ``type = "file"`` table."""

from __future__ import annotations

from pathlib import Path

from secrets_agent.backends.migration import Kwargs, MigrationError, Translation, leftovers

KEYS = {
    "connections_file_path": "connections_file",
    "variables_file_path": "variables_file",
    "configs_file_path": "config_file",
}


def translate(kwargs: Kwargs) -> Translation:
    t = Translation("file", origins={ours: theirs for theirs, ours in KEYS.items()})
    for theirs, ours in KEYS.items():
        path = kwargs.text(theirs)
        if not path:
            continue
        if not Path(path).is_absolute():
            raise MigrationError(
                f"{theirs}: {path!r} is relative to whatever directory each Airflow process "
                "starts in; give the absolute path"
            )
        t.options[ours] = path
    leftovers(kwargs, t, "no equivalent in the agent: review")
    return t
