"""GCP Secret Manager backend (async gRPC client), provider-compatible naming."""
