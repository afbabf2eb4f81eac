"""Azure Key Vault backend (async SDK), named as Airflow's microsoft-azure provider does."""
