"""Hypothesis on a shared, noisy 2-core machine: no per-example deadline and no complaint about slow data
generation (timing is for benchmarks, never for tests); the properties and example counts stay as written."""

from hypothesis import HealthCheck, settings

settings.register_profile("cdp", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cdp")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def chdb_sink(tmp_path_factory):
    """The embedded ClickHouse of the test process: chDB allows one engine path per process, so one for all."""
    from sinks.clickhouse import ClickHouseSink

    # Two insert connections, as a worker has by default: inserts run side by side.
    sink = ClickHouseSink(f"chdb://{tmp_path_factory.mktemp('ch') / 'db'}", insert_clients=2)
    yield sink
    sink.close()
