"""Adapters that move data between Kafka topics, tables and the core. No business logic lives here."""
