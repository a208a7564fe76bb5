"""Operations shared by the CLI, the demo, the benchmarks and the integration tests (Kafka, DLQ, workers)."""
