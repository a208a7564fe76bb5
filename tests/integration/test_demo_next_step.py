"""The demo's next step: after `make demo` (deploy/local/demo.sh), the commands it prints, run in a fresh shell,
find the demo's data (the README shows the same commands)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import orjson
import pytest

from config.settings import Settings
from streams.kafka import delete_topics
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def fresh_shell(script: str) -> subprocess.CompletedProcess[str]:
    """A login-free shell with none of the test's CDP_* settings: only what the demo's env file gives it."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_commands_printed_by_the_demo_find_its_events_in_a_fresh_shell(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    # The default data dir, as `make demo` has it (with-kafka.sh finds the running broker's pid file there); a port
    # and a ClickHouse path of the test's own.
    env.update(DEMO_USERS="50", DEMO_DAYS="1", DEMO_DIR=str(demo_dir), CDP_WEB_PORT=str(free_port()),
               CDP_PARTITIONS="2")
    demo = subprocess.run(["bash", "deploy/local/demo.sh"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    env_file = demo_dir / "env"
    prefix = next((line.split("CDP_TOPIC_PREFIX=")[1].split()[0] for line in env_file.read_text().splitlines()
                   if "CDP_TOPIC_PREFIX=" in line), None) if env_file.exists() else None
    try:
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert prefix, env_file.read_text()
        # The block the demo ends with: `source <env file>` and the commands to run after it.
        block = demo.stdout.split("== explore the demo's data", 1)[1].splitlines()[1:]
        printed = [line.strip() for line in block if line.startswith("   ")]
        assert printed[0] == f"source {env_file}", printed
        assert any(c.startswith("cdp sql ") for c in printed) and any(c.startswith("cdp funnel ") for c in printed)

        for command in printed[1:]:
            done = fresh_shell(f"set -e; {printed[0]}; {command}")
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            assert done.stdout.strip(), command

        count = fresh_shell(f'set -e; {printed[0]}; cdp sql "SELECT count() FROM cdp.events"')
        assert count.returncode == 0, count.stderr
        assert int(count.stdout.split()[-1]) > 0, count.stdout  # TSV with the column name first

        funnel_cmd = next(c for c in printed if c.startswith("cdp funnel "))
        funnel = fresh_shell(f"set -e; {printed[0]}; {funnel_cmd} --json")
        assert funnel.returncode == 0, funnel.stderr
        steps = orjson.loads(funnel.stdout)
        assert steps[0]["persons"] > 0, steps
    finally:
        if prefix:  # the broker outlives the test: leave none of the demo's topics on it
            asyncio.run(delete_topics(Settings(), prefix))
