"""Deployment configuration: `CDP_*` environment variables (Kafka and its security, ClickHouse, topics, roles)."""
