"""HashiCorp Vault / OpenBao backend (hvac), path-compatible with Airflow's VaultBackend."""
