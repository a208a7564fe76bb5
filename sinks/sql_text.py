"""SQL with its parameters written in, for people to read or paste into ``cdp sql`` or a BI tool
(``cdp attribution … --sql``). Queries that run are sent with their parameters apart (``ClickHouseSink.query``)."""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.binding import external_bind_re, format_query_value


def inline_parameters(sql: str, parameters: dict[str, Any]) -> str:
    """``sql`` with each ``{name:Type}`` placeholder named in ``parameters`` replaced by its value as a SQL
    literal, as clickhouse-connect's client-side binding writes values (``format_query_value``: strings quoted and
    escaped, lists as arrays). Placeholders of other names are left as they are."""

    def literal(m: Any) -> str:
        return str(format_query_value(parameters[m[1]])) if m[1] in parameters else str(m[0])

    return external_bind_re.sub(literal, sql)
