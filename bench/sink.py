"""Sink rows/s: the pipeline's own event rows inserted into a fresh embedded ClickHouse, in batches of the
pipeline's sink batch size and, in the same run, of one envelope's size (what each insert held before sink
batches), so the ratio shows what batching buys. A child process: chDB holds one database path per process.

    python -m bench.sink --rows ROWS.jsonl --path DIR [--batch-rows 20000] [--small-rows 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(rows: list[bytes], path: str, batch_rows: int, small_rows: int) -> dict[str, Any]:
    from sinks.clickhouse import EVENT_COLUMNS, ClickHouseSink

    sink = ClickHouseSink(f"chdb://{path}")
    try:
        sink.migrate()
        out: dict[str, Any] = {"rows": len(rows)}
        for name, size in (("batched", batch_rows), ("per_envelope", small_rows)):
            # Different batch sizes make different blocks, so ClickHouse deduplicates nothing between the runs.
            t0, c0 = time.perf_counter(), _cpu_s()
            for i in range(0, len(rows), size):
                # As the person stage inserts: one row per messageId.
                sink.insert_json("events", rows[i:i + size], EVENT_COLUMNS, token=f"bench:{name}:{i}", unique_keys=True,
                                 compact=True)
            wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
            out[f"{name}_rows_per_s"] = round(len(rows) / wall)
            out[f"{name}_cpu_us_per_row"] = round(cpu / len(rows) * 1e6, 2)
            out[f"{name}_batch_rows"] = size
        return out
    finally:
        sink.close()


def sink_rates(rows: list[bytes], workdir: Path, batch_rows: int, small_rows: int = 1000) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    rows_file = workdir / "sink-rows.jsonl"
    rows_file.write_bytes(b"\n".join(rows) + b"\n")
    db = workdir / "sink-bench-clickhouse"
    if db.exists():
        shutil.rmtree(db)
    from ops.worker import run_json_module

    return run_json_module("bench.sink", ["--rows", str(rows_file), "--path", str(db),
                                                  "--batch-rows", str(batch_rows), "--small-rows", str(small_rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    p.add_argument("--rows", required=True, help="event rows as the pipeline inserts them, one JSON per line")
    p.add_argument("--path", required=True, help="a fresh directory for the embedded ClickHouse")
    p.add_argument("--batch-rows", type=int, default=20_000)
    p.add_argument("--small-rows", type=int, default=1_000)
    a = p.parse_args(argv)
    rows = [ln for ln in Path(a.rows).read_bytes().split(b"\n") if ln]
    print(json.dumps(run(rows, a.path, a.batch_rows, a.small_rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
