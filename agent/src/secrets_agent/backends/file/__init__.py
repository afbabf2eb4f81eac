"""The embedded file backend: Airflow's LocalFilesystemBackend formats, reloaded on change."""
