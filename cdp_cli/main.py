"""``cdp``: run the worker, publish and replay events, generate traffic, query ClickHouse, check rules, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from config.settings import Settings


def _dt(text: str) -> datetime:
    d = datetime.fromisoformat(text)
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.kafka import TopicSetupError
    from streams.worker import run_worker

    try:
        run_worker(Settings())
    except TopicSetupError as exc:  # Kafka refused the topics (e.g. CDP_REPLICATION_FACTOR above the brokers)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from ops.worker import ClickHouseUnavailable, migrate
    from sinks.clickhouse import migrations

    s = Settings()
    try:
        applied = migrate(s)
    except ClickHouseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    print(f"{s.clickhouse_url}: schema at version {migrations()[-1].version:04d}"
          f" ({len(applied)} applied now)")
    return 0


def cmd_collector(args: argparse.Namespace) -> int:
    from streams.collector import run_standalone
    from streams.kafka import ensure_topics

    s = Settings()
    logging.basicConfig(level=s.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(ensure_topics(s))
    except Exception as exc:  # the collector answers 503 until the broker is back
        logging.warning("could not check topics (%r); serving anyway", exc)
    try:
        asyncio.run(run_standalone(s))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from ops.topics import publish_lines, read_lines

    s = Settings()
    n = asyncio.run(publish_lines(s, read_lines(args.file)))
    print(f"published {n} events to {s.raw_topic}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from ops.topics import publish_lines, read_lines, wait_processed
    from ops.worker import WorkerProcess, running_worker

    s = Settings()
    lines = read_lines(args.file)
    own: WorkerProcess | None = None
    if running_worker(s) is None:
        s.data_dir.mkdir(parents=True, exist_ok=True)
        own = WorkerProcess(log_path=s.data_dir / "replay-worker.log", port=s.web_port)
        own.start(s)
    try:
        n = asyncio.run(publish_lines(s, lines))
        asyncio.run(wait_processed(s, timeout_s=args.timeout))
    finally:
        if own is not None:
            rc = own.stop()
            if rc not in (0, None):
                print(f"worker exited with {rc}; see {own.log_path}", file=sys.stderr)
    print(f"replayed {n} events: processed and sunk")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from traffic.shop import generate

    end = _dt(args.end) if args.end else None
    out = sys.stdout.buffer
    for ev in generate(args.users, args.days, args.seed, end):
        out.write(orjson.dumps(ev) + b"\n")
    out.flush()
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from ops.worker import query

    fmt = {"tsv": "TabSeparatedWithNames", "json": "JSONEachRow", "pretty": "PrettyCompactMonoBlock",
           "vertical": "Vertical"}[args.format]
    try:
        out = query(Settings(), args.query, fmt, on_wait=_tell)
    except Exception as exc:  # a failed query is reported, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(out)
    return 0


def _tell(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_funnel(args: argparse.Namespace) -> int:
    from analytics.funnels import format_funnel, format_funnel_breakdown, funnel_breakdown, funnel_sql, funnel_table
    from ops.worker import query

    steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    modes = [m.strip() for arg in args.mode or [] for m in arg.split(",") if m.strip()]
    try:
        q = funnel_sql(steps, args.window, *_range(args), mode=modes, breakdown=args.breakdown,
                       merge_aware=not args.no_merge)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = query(Settings(), q.sql, "JSONEachRow", q.params)
    if args.breakdown is not None:
        tables = funnel_breakdown(steps, [(r["value"], int(r["level"]), int(r["persons"]))
                                          for r in map(orjson.loads, out.splitlines()) if r])
        if args.json:
            print(orjson.dumps([{"breakdown": v, "step": a, "persons": b, "of_prev_pct": c, "of_first_pct": d}
                                for v, t in tables.items() for a, b, c, d in t]).decode())
        else:
            print(format_funnel_breakdown(args.breakdown, tables))
        return 0
    levels = {int(r["level"]): int(r["persons"]) for r in map(orjson.loads, out.splitlines()) if r}
    rows = funnel_table(steps, levels)
    if args.json:
        print(orjson.dumps([{"step": a, "persons": b, "of_prev_pct": c, "of_first_pct": d}
                            for a, b, c, d in rows]).decode())
    else:
        print(format_funnel(rows))
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from analytics.funnels import format_retention, retention_sql
    from ops.worker import query

    q = retention_sql(args.period, args.periods, args.event, merge_aware=not args.no_merge)
    out = query(Settings(), q.sql, "JSONEachRow", q.params)
    rows = [(r["cohort"], int(r["k"]), int(r["persons"])) for r in map(orjson.loads, out.splitlines()) if r]
    if args.json:
        print(orjson.dumps([{"cohort": c, "k": k, "persons": n} for c, k, n in rows]).decode())
    else:
        print(format_retention(rows, args.periods))
    return 0


def _insight(args: argparse.Namespace, q: Any) -> list[dict] | None:
    """Rows of an insight query (an analytics.sql.Query) as dicts, or None when ``--sql`` asked for the SQL only
    (printed here, its parameters written in)."""
    from ops.worker import query

    if args.sql:
        from sinks.sql_text import inline_parameters

        print(inline_parameters(q.sql, q.params))
        return None
    out = query(Settings(), q.sql, "JSONEachRow", q.params)
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


def _show(args: argparse.Namespace, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    from analytics.insights import format_table

    print(orjson.dumps(rows).decode() if args.json else format_table(columns, rows))


def _range(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    return (_dt(args.since) if args.since else None), (_dt(args.until) if args.until else None)


def cmd_attribution(args: argparse.Namespace) -> int:
    from analytics.insights import ATTRIBUTION_COLUMNS, attribution_sql

    q = attribution_sql(args.model, args.conversion, args.lookback, args.half_life, *_range(args),
                        by_campaign=args.by_campaign, visit_gap=args.visit_gap, merge_aware=not args.no_merge)
    _show_by_channel(args, _insight(args, q), ATTRIBUTION_COLUMNS)
    return 0


def _show_by_channel(args: argparse.Namespace, rows: Any, channel_columns: Any) -> None:
    """Attribution and ROI rows: per channel, and per campaign too with --by-campaign."""
    if rows is not None:
        columns = list(channel_columns)
        if args.by_campaign:
            columns.insert(2, ("campaign", "campaign", "text"))
        _show(args, rows, columns)


def cmd_roi(args: argparse.Namespace) -> int:
    from analytics.insights import ROI_COLUMNS, roi_sql

    q = roi_sql(args.model, args.conversion, args.lookback, args.half_life, *_range(args),
                by_campaign=args.by_campaign, merge_aware=not args.no_merge)
    _show_by_channel(args, _insight(args, q), ROI_COLUMNS)
    return 0


def cmd_costs_load(args: argparse.Namespace) -> int:
    from analytics.insights import read_costs_csv
    from ops.worker import load_costs

    try:
        rows = read_costs_csv(args.file)
        if rows:
            load_costs(Settings(), rows, on_wait=_tell)
    except Exception as exc:  # a bad file or a refused load is reported, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["currency"]] = totals.get(r["currency"], 0.0) + r["cost"]
    days = sorted(r["day"] for r in rows)
    span = f", {days[0]} to {days[-1]}" if days else ""
    spent = ", ".join(f"{v:,.2f} {c}".strip() for c, v in sorted(totals.items()))
    print(f"loaded {len(rows)} cost rows into cdp.channel_costs{span}{'; ' + spent if spent else ''}")
    return 0


def cmd_abtest(args: argparse.Namespace) -> int:
    from analytics.insights import ABTEST_COLUMNS, abtest_readout, abtest_sql

    q = abtest_sql(args.experiment, args.conversion, args.window, *_range(args), merge_aware=not args.no_merge)
    rows = _insight(args, q)
    if rows is None:
        return 0
    try:
        readout = abtest_readout([(r["variant"], int(r["exposed"]), int(r["converted"]), int(r["mixed"]))
                                  for r in rows], args.control)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(readout).decode())
        return 0
    if not readout:
        print(f"no exposures of experiment {args.experiment!r} (event experiment_viewed)")
        return 0
    for r in readout:
        r["ci"] = "" if r["ci_low"] is None else f"{100 * r['ci_low']:+.1f}% .. {100 * r['ci_high']:+.1f}%"
    _show(args, readout, ABTEST_COLUMNS)
    mixed = sum(r["mixed"] for r in readout)
    print(f"\ncontrol: {readout[0]['variant']}; converted = {args.conversion} within {args.window} of the first "
          f"exposure; p-value: two-sided pooled two-proportion z-test"
          + (f"; {mixed} persons saw more than one variant (counted under their first)" if mixed else ""))
    return 0


def cmd_rfm(args: argparse.Namespace) -> int:
    from analytics.insights import RFM_PERSON_COLUMNS, RFM_SEGMENT_COLUMNS, rfm_persons_sql, rfm_segments_sql

    as_of = _dt(args.as_of) if args.as_of else datetime.now(UTC)
    if args.persons or args.segment:
        q = rfm_persons_sql(as_of, args.period, args.conversion, not args.no_merge, segment=args.segment)
        columns = RFM_PERSON_COLUMNS
    else:
        q = rfm_segments_sql(as_of, args.period, args.conversion, not args.no_merge)
        columns = RFM_SEGMENT_COLUMNS
    rows = _insight(args, q)
    if rows is not None:
        _show(args, rows, columns)
    return 0


def cmd_paths(args: argparse.Namespace) -> int:
    from analytics.insights import PATH_COLUMNS, path_text, paths_sql

    event, direction = (args.from_event, "from") if args.from_event else (args.to_event, "to")
    exclude = [x.strip() for x in args.exclude.split(",") if x.strip()]
    q = paths_sql(event, args.steps, args.top, args.window, direction, *_range(args), exclude=exclude,
                  collapse_repeats=args.collapse_repeats, merge_aware=not args.no_merge)
    rows = _insight(args, q)
    if rows is None:
        return 0
    if not args.json:
        rows = [{**r, "path": path_text(event, r["path"], direction)} for r in rows]
    _show(args, rows, PATH_COLUMNS)
    return 0


def _add_insight_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """cdp attribution, roi, costs, abtest, rfm, paths (docs/analytics.md)."""
    from analytics.insights import MODELS, NON_BEHAVIOUR_EVENTS

    def common(sp: argparse.ArgumentParser, since_help: str) -> None:
        sp.add_argument("--since", help=since_help + " at or after this ISO time (UTC unless given)")
        sp.add_argument("--until", help="... and before this ISO time")
        sp.add_argument("--no-merge", action="store_true", help="read raw OneIDs, ignoring identity merges")
        sp.add_argument("--json", action="store_true", help="rows as a JSON array")
        sp.add_argument("--sql", action="store_true", help="print the SQL (for cdp sql or a BI tool), run nothing")

    def model(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", choices=MODELS, default="last_click")
        sp.add_argument("--conversion", default="order_paid", help="the conversion event (revenue: its amount)")
        sp.add_argument("--lookback", default="30d", help="touchpoints this long before a conversion count")
        sp.add_argument("--half-life", default="7d", help="time_decay: a touch this much older weighs half")
        sp.add_argument("--by-campaign", action="store_true", help="one row per source, medium and campaign")

    sp = sub.add_parser("attribution", help="conversions and revenue credited to marketing channels")
    model(sp)
    sp.add_argument("--visit-gap", default="30m",
                    help="a touch repeating the previous campaign within this is the same visit")
    common(sp, "conversions")
    sp.set_defaults(fn=cmd_attribution)
    sp = sub.add_parser("roi", help="attributed revenue against channel costs (cdp costs load): ROI, ROAS")
    model(sp)
    common(sp, "conversions and cost days")
    sp.set_defaults(fn=cmd_roi)
    sp = sub.add_parser("costs", help="marketing spend per day and channel")
    csub = sp.add_subparsers(dest="costs_command", required=True)
    cp = csub.add_parser("load", help="load a CSV (day,source,medium,campaign,cost,currency) into "
                                      "cdp.channel_costs; a reloaded row replaces the earlier one")
    cp.add_argument("file")
    cp.set_defaults(fn=cmd_costs_load)
    sp = sub.add_parser("abtest", help="A/B test readout: conversion per variant, lift, p-value, CI")
    sp.add_argument("--experiment", required=True, help="experiment_id of Experiment Viewed events")
    sp.add_argument("--conversion", default="order_paid")
    sp.add_argument("--window", default="7d", help="a conversion counts this long after the first exposure")
    sp.add_argument("--control", help="the control variant (default: the first by name)")
    common(sp, "first exposures")
    sp.set_defaults(fn=cmd_abtest)
    sp = sub.add_parser("rfm", help="recency, frequency, monetary scores and segments")
    sp.add_argument("--as-of", help="ISO time the scores are taken at (default: now)")
    sp.add_argument("--period", default="365d", help="orders this long before --as-of count")
    sp.add_argument("--conversion", default="order_paid", help="the order event (monetary: its amount)")
    sp.add_argument("--persons", action="store_true", help="one row per person instead of segment sizes")
    sp.add_argument("--segment", help="only this segment's persons (implies --persons)")
    sp.add_argument("--no-merge", action="store_true", help="read raw OneIDs, ignoring identity merges")
    sp.add_argument("--json", action="store_true", help="rows as a JSON array")
    sp.add_argument("--sql", action="store_true", help="print the SQL (for cdp sql or a BI tool), run nothing")
    sp.set_defaults(fn=cmd_rfm)
    sp = sub.add_parser("paths", help="the most frequent next (or previous) steps around an event")
    anchor = sp.add_mutually_exclusive_group(required=True)
    anchor.add_argument("--from", dest="from_event", metavar="EVENT", help="paths after each EVENT")
    anchor.add_argument("--to", dest="to_event", metavar="EVENT", help="paths leading to each EVENT")
    sp.add_argument("--steps", type=int, default=3)
    sp.add_argument("--top", type=int, default=20)
    sp.add_argument("--window", default="1d", help="steps count this close to the event")
    sp.add_argument("--exclude", default=",".join(NON_BEHAVIOUR_EVENTS),
                    help="comma-separated events left out (default: %(default)s; '' for none)")
    sp.add_argument("--collapse-repeats", action="store_true", help="a run of the same event is one step")
    common(sp, "anchor events")
    sp.set_defaults(fn=cmd_paths)


def cmd_rules_check(args: argparse.Namespace) -> int:
    from rules.loader import RuleLoadError, load_rules

    directory = Path(args.dir) if args.dir else Settings().resolved_rules_dir
    try:
        rs = load_rules(directory)
    except RuleLoadError as exc:
        for e in exc.errors:
            print(e, file=sys.stderr)
        return 1
    print(f"{directory}: {len(rs.files)} files, {len(rs.triggers)} triggers, {len(rs.aliases)} aliases; "
          f"digest {rs.digest}")
    return 0


def cmd_dlq_stats(args: argparse.Namespace) -> int:
    from ops.dlq import dlq_stats

    s = Settings()
    counts = asyncio.run(dlq_stats(s))
    print(f"{'stage':<10} {'reason':<20} {'bad rows':>9}")
    for (stage, reason), n in sorted(counts.items()):
        print(f"{stage:<10} {reason:<20} {n:>9}")
    print(f"{'total':<31} {sum(counts.values()):>9}  ({s.dlq_topic})")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from ops.dlq import dlq_replay

    s = Settings()
    r = asyncio.run(dlq_replay(s, _dt(args.since) if args.since else None, args.reason, args.stage))
    print(f"replayed {r.replayed} of {r.seen} bad rows from {s.dlq_topic} to {s.raw_topic}, skipped {r.skipped}")
    if r.skipped:
        whys = sorted({x.why for x in r.skipped_rows})
        places = ", ".join(x.where for x in r.skipped_rows[:10])
        more = f", and {r.skipped - 10} more" if r.skipped > 10 else ""
        print(f"{r.skipped} rows could not be read ({places}{more}): {'; '.join(whys)}")
    if r.records:
        print(f"{r.records} rows record what failed and are not events: left on {s.dlq_topic}")
    if r.error and r.stopped_at is None:
        print(f"error: the replay could not start: {r.error}", file=sys.stderr)
        return 1
    if r.error:
        print(f"error: the replay stopped at {r.stopped_at} after replaying {r.replayed} rows ({r.error}); the rows"
              " before that place are replayed, and replaying again duplicates nothing", file=sys.stderr)
        return 1
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from ops.profile import format_profile, profile
    from ops.worker import ClickHouseUnavailable, QueryFailed

    id_type, sep, value = args.identifier.partition(":")
    if not (sep and id_type.strip() and value.strip()):
        print(f"error: expected TYPE:VALUE (e.g. phone:13800138000), got {args.identifier!r}", file=sys.stderr)
        return 2
    try:
        p = profile(Settings(), id_type.strip(), value, on_wait=_tell)
    except (ClickHouseUnavailable, QueryFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(p).decode() if args.json else format_profile(p))
    return 0 if p["found"] else 1


def cmd_identity_split(args: argparse.Namespace) -> int:
    from ops.identity import split_identifier
    from ops.profile import format_profile, profile

    id_type, sep, value = args.identifier.partition(":")
    if not (sep and id_type.strip() and value.strip()):
        print(f"error: expected TYPE:VALUE (e.g. phone:13800138000), got {args.identifier!r}", file=sys.stderr)
        return 2
    other = None
    if args.other:
        o_type, o_sep, o_value = args.other.partition(":")
        if not (o_sep and o_type.strip() and o_value.strip()):
            print(f"error: --from expects TYPE:VALUE, got {args.other!r}", file=sys.stderr)
            return 2
        other = (o_type.strip(), o_value)
    s = Settings()
    req = split_identifier(s, id_type.strip(), value, other)
    if req.error:
        print(f"error: {req.error}", file=sys.stderr)
        return 2
    p = profile(s, id_type.strip(), value, on_wait=_tell)
    if args.json:
        print(orjson.dumps({"split": {"type": req.id_type, "masked": req.masked}, "person": p}).decode())
    else:
        print(f"split {req.id_type} {req.masked} from its person; it now belongs to:\n")
        print(format_profile(p))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analytics.report import gather, render_report
    from ops.worker import query

    s = Settings()
    steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    try:
        data = gather(lambda sql, params: query(s, sql, "JSONEachRow", params, on_wait=_tell), steps, args.window,
                      args.period, args.periods, *_range(args), args.where, merge_aware=not args.no_merge,
                      actions_where=args.actions_where)
    except Exception as exc:  # a failed query is reported, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(data), encoding="utf-8")
    print(f"wrote {out.resolve()} ({data.totals['events']:,} events, {data.totals['actions']:,} actions)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.pipeline import run_bench

    result = run_bench(events=args.events, users=args.users, faust_baseline=args.faust_baseline,
                       analytics_events=args.analytics_events, identity_persons=args.identity_persons,
                       identity_ids=args.identity_ids)
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdp", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run the pipeline worker (agents, web port: /healthz, /metrics)").set_defaults(
        fn=cmd_worker)
    sub.add_parser("collector", help="the HTTP collector alone (Segment-compatible /v1/*), no agents").set_defaults(
        fn=cmd_collector)
    sub.add_parser("migrate", help="apply pending ClickHouse migrations (the worker also does at start)"
                   ).set_defaults(fn=cmd_migrate)
    sp = sub.add_parser("send", help="publish a JSON-lines file of events to the raw topic")
    sp.add_argument("file", help="JSON lines, or - for standard input")
    sp.set_defaults(fn=cmd_send)
    sp = sub.add_parser("replay", help="publish a file, run the pipeline until all is processed and sunk, exit")
    sp.add_argument("file")
    sp.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for processing (default 900)")
    sp.set_defaults(fn=cmd_replay)
    sp = sub.add_parser("generate", help="synthetic shop traffic as JSON lines on stdout")
    sp.add_argument("--users", type=int, default=1000)
    sp.add_argument("--days", type=float, default=7)
    sp.add_argument("--seed", type=int, default=1)
    sp.add_argument("--end", help="ISO time the traffic ends at (default: now)")
    sp.set_defaults(fn=cmd_generate)
    sp = sub.add_parser("sql", help="run SQL on the configured ClickHouse (also while a worker runs)")
    sp.add_argument("query")
    sp.add_argument("--format", choices=["tsv", "json", "pretty", "vertical"], default="tsv")
    sp.set_defaults(fn=cmd_sql)
    sp = sub.add_parser("funnel", help="conversion funnel by OneID")
    sp.add_argument("--steps", required=True, help="comma-separated event names, in order")
    sp.add_argument("--window", default="1d", help="time allowed from the first step to the last (e.g. 1h, 7d)")
    sp.add_argument("--since")
    sp.add_argument("--until")
    sp.add_argument("--mode", action="append", metavar="MODE",
                    help="windowFunnel mode: strict_order, strict_deduplication, strict_increase (repeat or "
                         "comma-separate to combine; default: none)")
    sp.add_argument("--breakdown", metavar="PROPERTY",
                    help="one funnel per value of this property of the person's first first-step event")
    sp.add_argument("--no-merge", action="store_true", help="count raw OneIDs, ignoring identity merges")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_funnel)
    sp = sub.add_parser("retention", help="retention by first-seen cohort")
    sp.add_argument("--period", choices=["day", "week"], default="week")
    sp.add_argument("--periods", type=int, default=8)
    sp.add_argument("--event", help="count as active only this event (default: any event)")
    sp.add_argument("--no-merge", action="store_true", help="count raw OneIDs, ignoring identity merges")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_retention)
    _add_insight_parsers(sub)
    sp = sub.add_parser("rules", help="rule files")
    rsub = sp.add_subparsers(dest="rules_command", required=True)
    rp = rsub.add_parser("check", help="validate rule files; errors name file, line and field")
    rp.add_argument("dir", nargs="?")
    rp.set_defaults(fn=cmd_rules_check)
    sp = sub.add_parser("dlq", help="bad rows on the dead-letter topic")
    dsub = sp.add_subparsers(dest="dlq_command", required=True)
    dsub.add_parser("stats", help="bad rows by stage and reason").set_defaults(fn=cmd_dlq_stats)
    rp = dsub.add_parser("replay", help="re-publish bad rows' original messages after a fix (no duplicates)")
    rp.add_argument("--since", help="only rows dead-lettered at or after this ISO time")
    rp.add_argument("--reason", help="only rows with this reason (e.g. schema, no_identifier)")
    rp.add_argument("--stage", help="only rows of this stage (decode, validate)")
    rp.set_defaults(fn=cmd_dlq_replay)
    sp = sub.add_parser("profile", help="one person: OneIDs, identifiers (masked), links and refused links, events, "
                        "actions")
    sp.add_argument("identifier", metavar="TYPE:VALUE", help="an identifier of the person, e.g. phone:13800138000")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_profile)
    sp = sub.add_parser("identity", help="identity operations")
    isub = sp.add_subparsers(dest="identity_command", required=True)
    ip = isub.add_parser("split", help="remove a wrong link: detach an identifier from its person, re-form the "
                         "persons it joined, recompute their state and ClickHouse answers")
    ip.add_argument("identifier", metavar="TYPE:VALUE", help="the identifier to detach, e.g. phone:13800138000")
    ip.add_argument("--from", dest="other", metavar="TYPE:VALUE",
                    help="cut only its links with this identifier (one wrong link), not all of them")
    ip.add_argument("--json", action="store_true", help="print the person it now belongs to as JSON")
    ip.set_defaults(fn=cmd_identity_split)
    sp = sub.add_parser("report", help="a self-contained HTML page: funnel, retention heatmap, actions per day")
    sp.add_argument("--out", default="report.html", help="file to write (default report.html)")
    sp.add_argument("--steps", default="product_view,add_to_cart,checkout_start,order_paid",
                    help="funnel steps, comma-separated")
    sp.add_argument("--window", default="1d", help="funnel window (default 1d)")
    sp.add_argument("--period", choices=["day", "week"], default="week")
    sp.add_argument("--periods", type=int, default=8)
    sp.add_argument("--since")
    sp.add_argument("--until")
    sp.add_argument("--where", help="SQL condition on cdp.events columns narrowing every figure's events")
    sp.add_argument("--actions-where", help="SQL condition on cdp.actions columns narrowing actions and feedback")
    sp.add_argument("--no-merge", action="store_true", help="count raw OneIDs, ignoring identity merges")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("bench", help="raw consume rate vs. whole-pipeline rate on the local broker")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--events", type=int, default=200_000)
    sp.add_argument("--users", type=int, default=20_000)
    sp.add_argument("--analytics-events", type=int, default=0, metavar="N",
                    help="also time funnel and retention over N synthetic events in a fresh chDB (e.g. 10000000)")
    sp.add_argument("--faust-baseline", action="store_true",
                    help="also measure a do-nothing Faust agent over the same events (about a minute more)")
    sp.add_argument("--identity-persons", type=int, default=50_000, metavar="N",
                    help="new persons (two events each) through the link writer for its rate; 0 skips it")
    sp.add_argument("--identity-ids", type=int, default=1_000_000, metavar="N",
                    help="identifiers through the identity graph into RocksDB for bytes per million; 0 skips it")
    sp.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
