"""The fleet tier: node-cache misses go through one shared, encrypted Valkey/Redis cache."""
