"""Adapters that write out of the pipeline: ClickHouse (embedded chDB or a server)."""
