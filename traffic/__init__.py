"""Synthetic, realistic shop traffic (`cdp generate`, the demo, tests and benchmarks)."""
