"""The collector while its broker goes away and comes back: 503 meanwhile, and nothing it accepted is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from config.settings import Settings
from ops.topics import read_topic
from ops.worker import post_json, wait_http
from tests.integration.conftest import free_port, run

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def broker(cmd: str, env: dict[str, str]) -> None:
    subprocess.run([str(ROOT / "deploy/local/kafka.sh"), cmd], env=env, check=True, capture_output=True, timeout=120)


def two_free_ports() -> int:
    import socket

    for _ in range(50):
        p = free_port()
        if p >= 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no two adjacent free ports")


def post_event(url: str, mid: str) -> int:
    return post_json(url + "/v1/track", orjson.dumps({"messageId": mid, "event": "Product Viewed",
                                                      "userId": "u-outage"}))


def test_collector_answers_503_while_the_broker_is_down_and_loses_nothing(tmp_path):
    kport = two_free_ports()  # the broker on kport, its controller on kport + 1
    broker_env = {**os.environ, "CDP_LOCAL_KAFKA_PORT": str(kport), "CDP_DATA_DIR": str(tmp_path / "broker")}
    web = free_port()
    env = {**os.environ, "CDP_KAFKA_BOOTSTRAP": f"127.0.0.1:{kport}", "CDP_WEB_PORT": str(web),
           "CDP_TOPIC_PREFIX": "outage", "CDP_COLLECTOR_ACK_TIMEOUT_S": "3", "CDP_DATA_DIR": str(tmp_path),
           "CDP_PARTITIONS": "1"}
    url = f"http://127.0.0.1:{web}"
    broker("up", broker_env)
    proc = subprocess.Popen([sys.executable, "-m", "cdp_cli.main", "collector"], env=env,
                            stdout=open(tmp_path / "collector.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    accepted: list[str] = []
    try:
        wait_http(url + "/healthz")
        for i in range(10):
            assert post_event(url, f"before-{i}") == 200
            accepted.append(f"before-{i}")
        broker("down", broker_env)
        during = [post_event(url, f"during-{i}") for i in range(3)]
        assert during == [503, 503, 503], (tmp_path / "collector.log").read_text()[-3000:]
        broker("up", broker_env)
        deadline = time.monotonic() + 60
        i = 0
        while len([a for a in accepted if a.startswith("after")]) < 10 and time.monotonic() < deadline:
            status = post_event(url, f"after-{i}")
            assert status in (200, 503), (status, (tmp_path / "collector.log").read_text()[-3000:])
            if status == 200:
                accepted.append(f"after-{i}")
            i += 1
        assert len(accepted) == 20, (tmp_path / "collector.log").read_text()[-3000:]
        s = Settings(kafka_bootstrap=f"127.0.0.1:{kport}", topic_prefix="outage")
        stored = {orjson.loads(m.value)["messageId"] for m in run(read_topic(s, s.raw_topic))}
        assert set(accepted) <= stored  # every 200 is on the topic; a 503'd one may be too (a retry dedupes it)
    finally:
        proc.terminate()
        proc.wait(30)
        broker("down", broker_env)
