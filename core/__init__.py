"""The pure core: plain Python over explicit state objects. No faust, aiokafka or clickhouse_connect here
(tests/test_architecture.py enforces it); adapters in streams/ and sinks/ move data in and out."""
