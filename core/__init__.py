"""The pure core: plain Python over explicit state objects. No faust, aiokafka or clickhouse_connect here
(tests/test_architecture.py enforces it); adapters in streams/ and sinks/ move data in and out."""

from core.native import enable as _enable_native

# The per-event modules compiled from these very sources, when built (core/native.py); else the sources.
NATIVE: bool = _enable_native(__path__)
