"""Every value the analyst queries take reaches ClickHouse bound to a ``{name:Type}`` placeholder, never spliced
into the SQL: event names, property names, experiment ids and segments with quotes, backslashes, braces (even a
placeholder's own spelling) and Unicode count as what they are, and an injection attempt matches nothing. The SQL
``--sql`` prints (values written in by clickhouse-connect) gives the same rows as the bound query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from analytics import insights
from analytics.funnels import funnel_sql, retention_sql
from analytics.sql import Params, Query, time_range
from cdp_cli.main import main
from core.ingest import epoch_ms
from sinks.sql_text import inline_parameters

E1 = "o'clock{x}"
E2 = 'back\\slash "q"'
E3 = "日本語 {step_1:String} ✓"  # a placeholder's spelling inside a value is text
INJECTION = "x') OR 1=1 --"
PROP = "cat'egory {a} \\ é"
EXPERIMENT = "exp'{1}\\ü"
T0 = datetime(2026, 9, 20, 12, tzinfo=UTC)
SCOPE = "message_id LIKE 'bind-%'"

# (person, event, seconds after T0, properties)
EVENTS: list[tuple[int, str, int, dict[str, Any]]] = [
    (0, "experiment_viewed", -5, {"experiment_id": EXPERIMENT, "variation_id": "v'1"}),
    (0, E1, 0, {PROP: "a'1"}), (0, E2, 10, {}), (0, E3, 20, {}),
    (1, "experiment_viewed", -5, {"experiment_id": EXPERIMENT, "variation_id": "v'1"}),
    (1, E1, 0, {PROP: "b\\2"}), (1, E2, 5, {}),
    (2, "experiment_viewed", -5, {"experiment_id": EXPERIMENT, "variation_id": "v{2}"}),
    (2, E1, 0, {PROP: "a'1"}),
    (3, E2, 30, {}), (3, E3, 40, {}),
    # Near misses: a prefix of E1, and the injection's own words.
    (4, "o'clock", 0, {}), (4, "x", 1, {}),
]


@pytest.fixture(scope="module")
def sink(chdb_sink):
    chdb_sink.migrate()
    t0 = epoch_ms(T0)
    lines = [orjson.dumps({"message_id": f"bind-{i}", "oneid": f"o_bind_{p}", "type": "track", "event": e,
                           "ts": (t0 + 1000 * s) / 1000, "received_at": (t0 + 1000 * s + 50) / 1000,
                           "properties": orjson.dumps(props).decode()})
             for i, (p, e, s, props) in enumerate(EVENTS)]
    chdb_sink.insert_json("events", lines, ["message_id", "oneid", "type", "event", "ts", "received_at",
                                            "properties"], token="binding-test")
    return chdb_sink


def rows(sink: Any, q: Query) -> list[tuple[Any, ...]]:
    """The bound query's rows, after checking that the SQL holds none of the odd values and that the SQL printed
    with its values written in gives the same rows."""
    for value in (E1, E2, E3, INJECTION, PROP, EXPERIMENT):
        assert value not in q.sql
    got = sink.rows(*q)
    assert sink.rows(inline_parameters(q.sql, q.params)) == got
    return got


def test_funnel_steps_with_quotes_braces_and_unicode_count_as_themselves(sink):
    got = dict(rows(sink, funnel_sql([E1, E2, E3], "1h", where=SCOPE)))
    assert got == {0: 1, 1: 1, 2: 1, 3: 1}
    got = dict(rows(sink, funnel_sql([E1, E2, E3], "1h", mode="strict_order", where=SCOPE)))
    assert got == {0: 2, 1: 1, 2: 1, 3: 1}  # with person 4, whose every event is not a step


def test_a_funnel_breakdown_by_an_oddly_named_property(sink):
    got = rows(sink, funnel_sql([E1, E2, E3], "1h", breakdown=PROP, where=SCOPE))
    assert sorted(got) == [("a'1", 1, 1), ("a'1", 3, 1), ("b\\2", 2, 1)]


def test_a_time_range_is_bound_to_the_millisecond(sink):
    # until is exclusive: person 0's E2, exactly 10 s after T0, is out.
    got = dict(rows(sink, funnel_sql([E1, E2], "1h", since=T0, until=T0 + timedelta(seconds=10), where=SCOPE)))
    assert got == {1: 2, 2: 1}
    got = dict(rows(sink, funnel_sql([E1, E2], "1h", since=T0 + timedelta(milliseconds=1), where=SCOPE)))
    assert got == {0: 3}  # the E1s at T0 are out; persons 0, 1 and 3 still have an E2


def test_an_injection_attempt_matches_nothing(sink):
    assert rows(sink, funnel_sql([INJECTION, E1], "1h", where=SCOPE)) == [(0, 3)]
    assert rows(sink, insights.abtest_sql(INJECTION, where=SCOPE)) == []
    assert rows(sink, insights.attribution_sql("last_click", conversion=INJECTION, where=SCOPE)) == []
    assert rows(sink, insights.paths_sql(INJECTION, where=SCOPE)) == []
    assert rows(sink, insights.rfm_persons_sql(T0 + timedelta(days=1), "10d", conversion=E1, where=SCOPE,
                                               segment=INJECTION)) == []
    cohorts = rows(sink, retention_sql("day", 1, event=INJECTION, where=SCOPE))
    assert [(k, n) for _, k, n in cohorts] == [(-1, 5)]  # the cohort, and nobody active in it


def test_retention_of_an_odd_event(sink):
    assert [(k, n) for _, k, n in rows(sink, retention_sql("day", 1, event=E3, where=SCOPE))] == [(-1, 5), (0, 2)]


def test_abtest_with_an_odd_experiment_id_and_conversion(sink):
    got = rows(sink, insights.abtest_sql(EXPERIMENT, conversion=E3, window="1h", where=SCOPE))
    assert got == [("v'1", 2, 1, 0), ("v{2}", 1, 0, 0)]


def test_attribution_of_an_odd_conversion(sink):
    got = rows(sink, insights.attribution_sql("linear", conversion=E1, where=SCOPE))
    assert [(s, m, c) for s, m, c, _ in got] == [("(direct)", "(none)", 3.0)]


def test_paths_around_an_odd_event_excluding_odd_events(sink):
    got = rows(sink, insights.paths_sql(E1, 2, 10, "1h", "from", exclude=[E2], where=SCOPE))
    assert {tuple(path): n for path, n, _ in got} == {(E3, "(end)"): 1, ("(end)",): 2}
    got = rows(sink, insights.paths_sql(E3, 1, 10, "1h", "to", exclude=[E1], where=SCOPE))
    assert {tuple(path): n for path, n, _ in got} == {(E2,): 2}


def test_rfm_segments_by_name(sink):
    as_of = T0 + timedelta(days=1)
    # Three persons with one E1 each, all tied: every score 1, segment Lost.
    persons = rows(sink, insights.rfm_persons_sql(as_of, "10d", conversion=E1, where=SCOPE, segment="Lost"))
    assert sorted(r[0] for r in persons) == ["o_bind_0", "o_bind_1", "o_bind_2"]
    assert [r[:2] for r in rows(sink, insights.rfm_segments_sql(as_of, "10d", conversion=E1, where=SCOPE))] == \
        [("Lost", 3)]


def test_params_of_composed_queries_keep_their_names_apart():
    p = Params()
    assert p("event", "a", "String") == "{event:String}"
    assert p("event", "a", "String") == "{event:String}"  # the same value: the same placeholder
    assert p("event", "b", "String") == "{event_2:String}"
    assert p("event", "a", "Array(String)") == "{event_3:Array(String)}"
    assert time_range(p, T0, None) == ["ts >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"]
    assert p.values == {"event": "a", "event_2": "b", "event_3": "a", "since": epoch_ms(T0)}


def test_cli_sql_writes_the_values_in(sink, capsys):
    assert main(["abtest", "--experiment", EXPERIMENT, "--conversion", E3, "--window", "1h", "--sql"]) == 0
    sql = capsys.readouterr().out
    assert "'exp\\'{1}\\\\ü'" in sql and "{" + "experiment:String}" not in sql
    # The printed SQL, narrowed to this test's events, reads what the bound query reads.
    scoped = sql.replace("event = 'experiment_viewed'", f"event = 'experiment_viewed' AND {SCOPE}")
    assert sink.rows(scoped) == [("v'1", 2, 1, 0), ("v{2}", 1, 0, 0)]
