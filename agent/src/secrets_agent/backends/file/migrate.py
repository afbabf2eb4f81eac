"""Airflow's ``LocalFilesystemBackend`` kwargs as a ``type = "file"`` table."""

from __future__ import annotations

from secrets_agent.backends.migration import Kwargs, Translation, leftovers

KEYS = {
    "connections_file_path": "connections_file",
    "variables_file_path": "variables_file",
    "configs_file_path": "config_file",
}


def translate(kwargs: Kwargs) -> Translation:
    t = Translation("file", origins={ours: theirs for theirs, ours in KEYS.items()})
    for theirs, ours in KEYS.items():
        path = kwargs.text(theirs)
        if path:  # a relative one is refused by the command, as every backend's file paths
            t.options[ours] = path
    leftovers(kwargs, t, "no equivalent in the agent: review")
    return t
