"""Hypothesis on a shared, noisy 2-core machine: no per-example deadline and no complaint about slow data
generation (timing is for benchmarks, never for tests); the properties and example counts stay as written."""

from hypothesis import HealthCheck, settings

settings.register_profile("cdp", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cdp")
