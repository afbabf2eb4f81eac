"""Running as a service: metrics, logging, systemd protocols, process hardening."""
