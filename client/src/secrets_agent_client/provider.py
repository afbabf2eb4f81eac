"""What Airflow's providers manager reads through the ``apache_airflow_provider`` entry point.

Registered in ``client/pyproject.toml``, so ``airflow providers secrets`` and the UI's providers
page list ``AgentSecretsBackend``. Nothing imports this module but Airflow.
"""

from __future__ import annotations

from secrets_agent_client import __version__


def get_provider_info() -> dict[str, object]:
    """The provider info Airflow validates against its provider_info schema."""
    return {
        "package-name": "airflow-secrets-agent-client",
        "name": "Airflow Secrets Agent",
        "description": (
            "Reads connections, variables and config from a local airflow-secrets-agent "
            "over its Unix socket."
        ),
        "versions": [__version__],
        "secrets-backends": ["secrets_agent_client.AgentSecretsBackend"],
    }
