"""airflow-secrets-agent: a local, caching secrets agent for Apache Airflow."""

__version__ = "0.1.0"
