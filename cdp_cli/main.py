"""``cdp``: run the worker, publish and replay events, generate traffic, query ClickHouse, check rules, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from core.settings import Settings


def _dt(text: str) -> datetime:
    d = datetime.fromisoformat(text)
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from sinks.clickhouse import ClickHouseSink
    from streams.app import build_pipeline
    from streams.kafka import ensure_topics

    s = Settings()
    logging.basicConfig(level=s.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(ensure_topics(s))
    sink = None
    if s.runs_persons:  # ingest-only workers hold no ClickHouse (so they can run beside an embedded one)
        sink = ClickHouseSink(s.clickhouse_url)
        sink.migrate()
    asyncio.set_event_loop(asyncio.new_event_loop())
    pipeline = build_pipeline(s, sink=sink)
    worker = faust.Worker(pipeline.app, loglevel=s.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from sinks.clickhouse import ClickHouseSink, migrations

    s = Settings()
    sink = ClickHouseSink(s.clickhouse_url)
    try:
        applied = sink.migrate()
    finally:
        sink.close()
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
    from cdp_cli.ops import publish_lines, read_lines

    s = Settings()
    n = asyncio.run(publish_lines(s, read_lines(args.file)))
    print(f"published {n} events to {s.raw_topic}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from cdp_cli.ops import WorkerProcess, publish_lines, read_lines, running_worker, wait_processed

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
    from cdp_cli.generate import generate

    end = _dt(args.end) if args.end else None
    out = sys.stdout.buffer
    for ev in generate(args.users, args.days, args.seed, end):
        out.write(orjson.dumps(ev) + b"\n")
    out.flush()
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from cdp_cli.ops import query

    fmt = {"tsv": "TabSeparatedWithNames", "json": "JSONEachRow", "pretty": "PrettyCompactMonoBlock",
           "vertical": "Vertical"}[args.format]
    try:
        out = query(Settings(), args.query, fmt)
    except Exception as exc:  # a failed query is reported, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(out)
    return 0


def cmd_funnel(args: argparse.Namespace) -> int:
    from cdp_cli.analytics import format_funnel, funnel_sql, funnel_table
    from cdp_cli.ops import query

    steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    sql = funnel_sql(steps, args.window, _dt(args.since) if args.since else None,
                     _dt(args.until) if args.until else None)
    out = query(Settings(), sql, "JSONEachRow")
    levels = {int(r["level"]): int(r["persons"]) for r in map(orjson.loads, out.splitlines()) if r}
    rows = funnel_table(steps, levels)
    if args.json:
        print(orjson.dumps([{"step": a, "persons": b, "of_prev_pct": c, "of_first_pct": d}
                            for a, b, c, d in rows]).decode())
    else:
        print(format_funnel(rows))
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from cdp_cli.analytics import format_retention, retention_sql
    from cdp_cli.ops import query

    out = query(Settings(), retention_sql(args.period, args.periods, args.event), "JSONEachRow")
    rows = [(r["cohort"], int(r["k"]), int(r["persons"])) for r in map(orjson.loads, out.splitlines()) if r]
    if args.json:
        print(orjson.dumps([{"cohort": c, "k": k, "persons": n} for c, k, n in rows]).decode())
    else:
        print(format_retention(rows, args.periods))
    return 0


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
    from cdp_cli.ops import dlq_stats

    s = Settings()
    counts = asyncio.run(dlq_stats(s))
    print(f"{'stage':<10} {'reason':<20} {'bad rows':>9}")
    for (stage, reason), n in sorted(counts.items()):
        print(f"{stage:<10} {reason:<20} {n:>9}")
    print(f"{'total':<31} {sum(counts.values()):>9}  ({s.dlq_topic})")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from cdp_cli.ops import dlq_replay

    s = Settings()
    n, seen = asyncio.run(dlq_replay(s, _dt(args.since) if args.since else None, args.reason, args.stage))
    print(f"replayed {n} of {seen} bad rows from {s.dlq_topic} to {s.raw_topic}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cdp_cli.bench import run_bench

    result = run_bench(events=args.events, users=args.users, faust_baseline=args.faust_baseline)
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
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_funnel)
    sp = sub.add_parser("retention", help="retention by first-seen cohort")
    sp.add_argument("--period", choices=["day", "week"], default="week")
    sp.add_argument("--periods", type=int, default=8)
    sp.add_argument("--event", help="count as active only this event (default: any event)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_retention)
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
    sp = sub.add_parser("bench", help="raw consume rate vs. whole-pipeline rate on the local broker")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--events", type=int, default=200_000)
    sp.add_argument("--users", type=int, default=20_000)
    sp.add_argument("--faust-baseline", action="store_true",
                    help="also measure a do-nothing Faust agent over the same events (about a minute more)")
    sp.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
