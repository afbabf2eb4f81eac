"""``secrets-agent migrate``: an Airflow secrets backend's settings as an agent config."""
