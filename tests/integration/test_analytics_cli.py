"""The analyst commands against a running worker: their bound values travel to the worker's embedded ClickHouse
(``/admin/sql``'s parameters) and count events whose names hold quotes, braces, backslashes and Unicode as
themselves, while an injection attempt matches nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from ops.topics import publish_lines, wait_processed
from tests.integration.conftest import run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
E1, E2 = "o'clock{x}", "日本語 \\ {step_1:String}"
EXPERIMENT = "exp'{1}ü"


def cdp(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdp_cli.main", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_funnel_abtest_and_report_bind_their_values_through_the_worker(deployment, tmp_path):
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    def event(user: int, name: str, seconds: int, **props: str) -> bytes:
        return orjson.dumps({"type": "track", "messageId": f"m-{user}-{seconds}-{len(props)}", "userId": f"u{user}",
                             "event": name, "properties": props,
                             "timestamp": (t0 + timedelta(seconds=seconds)).isoformat()})

    lines = [event(0, "experiment_viewed", 0, experiment_id=EXPERIMENT, variation_id="v'1"),
             event(0, E1, 1), event(0, E2, 2),
             event(1, "experiment_viewed", 0, experiment_id=EXPERIMENT, variation_id="v'1"),
             event(1, E1, 1),
             event(2, E2, 1)]
    with deployment.worker() as w:
        w.start()
        run(publish_lines(deployment.settings, lines))
        run(wait_processed(deployment.settings, timeout_s=120))

        r = cdp("funnel", "--steps", f"{E1},{E2}", "--window", "1h", "--json", env=deployment.env)
        assert r.returncode == 0, r.stderr
        assert [s["persons"] for s in orjson.loads(r.stdout)] == [2, 1]
        r = cdp("funnel", "--steps", f"x') OR 1=1 --,{E1}", "--window", "1h", "--json", env=deployment.env)
        assert r.returncode == 0, r.stderr
        assert [s["persons"] for s in orjson.loads(r.stdout)] == [0, 0]

        r = cdp("abtest", "--experiment", EXPERIMENT, "--conversion", E2, "--window", "1h", "--json",
                env=deployment.env)
        assert r.returncode == 0, r.stderr
        assert [(v["variant"], v["exposed"], v["converted"]) for v in orjson.loads(r.stdout)] == [("v'1", 2, 1)]

        r = cdp("report", "--out", str(tmp_path / "report.html"), "--steps", f"{E1},{E2}",
                "--since", t0.isoformat(), "--until", (t0 + timedelta(minutes=5)).isoformat(), env=deployment.env)
        assert r.returncode == 0, r.stderr
        assert "(6 events, 0 actions)" in r.stdout
