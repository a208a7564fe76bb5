"""Analyst SQL with its values bound, not spliced: builders write ClickHouse's ``{name:Type}`` placeholders and
collect the values beside them (``Query``). Whoever runs a query passes ``params`` to clickhouse-connect
(``ops.worker.query(s, q.sql, fmt, q.params)``, ``ClickHouseSink.query``/``rows``), which sends them to ClickHouse
apart from the SQL, so an event name like ``o'clock{x}`` is a value, never SQL. A ``where`` an analyst gives is the
exception: it is SQL they write, and goes into the query as written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from core.ingest import epoch_ms


class Query(NamedTuple):
    """SQL with ``{name:Type}`` placeholders and the values they take (``sink.rows(*q)`` runs it)."""

    sql: str
    params: dict[str, Any]


class Params:
    """The values of one query as it is built: ``p("event", "order_paid", "String")`` is the placeholder text
    ``{event:String}``, the value kept under that name. A name asked for again with another value or type gets a
    suffix (``event_2``), so builders compose (ROI holds attribution's query) without taking each other's names."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._types: dict[str, str] = {}

    def __call__(self, name: str, value: Any, type_: str) -> str:
        key, n = name, 1
        while key in self.values and (self.values[key], self._types[key]) != (value, type_):
            n += 1
            key = f"{name}_{n}"
        self.values[key] = value
        self._types[key] = type_
        return f"{{{key}:{type_}}}"

    def query(self, sql: str) -> Query:
        return Query(sql, dict(self.values))


def utc_ms(d: datetime) -> int:
    """Milliseconds since the epoch of a time, naive meaning UTC (``core.ingest.epoch_ms``, exact)."""
    return epoch_ms(d if d.tzinfo else d.replace(tzinfo=UTC))


def ms_time(p: Params, name: str, ms: int) -> str:
    """A DateTime64(3, 'UTC') of bound epoch milliseconds."""
    return f"fromUnixTimestamp64Milli({p(name, ms, 'Int64')}, 'UTC')"


def time_range(p: Params, since: datetime | None, until: datetime | None, column: str = "ts") -> list[str]:
    """SQL conditions keeping ``column`` (a DateTime64) in [since, until)."""
    return ([f"{column} >= {ms_time(p, 'since', utc_ms(since))}"] if since else []) + \
        ([f"{column} < {ms_time(p, 'until', utc_ms(until))}"] if until else [])


def property_sql(p: Params, name: str, label: str = "property") -> str:
    """A property of the event's ``properties`` JSON as text: strings unquoted, numbers and booleans as written,
    '' where absent. ``label`` names the property name's placeholder."""
    key = p(label, name, "String")
    return (f"if(JSONType(properties, {key}) = 'String', JSONExtractString(properties, {key}),"
            f" JSONExtractRaw(properties, {key}))")
