"""Benchmarks: the pipeline against the raw consume rate of the same run, the sink, analytics (`cdp bench`)."""
