"""A Faust agent that does nothing, over one topic: the per-event cost of Faust's stream machinery.

Run as ``python -m bench.faust_agent TOPIC N BOOTSTRAP PORT DATADIR``; prints events/s as JSON on stdout.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import faust
import orjson


def main() -> None:
    topic_name, n, bootstrap, port, datadir = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    # Named after the topic's prefix, so the topics Faust makes for it (its assignor's) go with the benchmark's.
    prefix = topic_name.split(".", 1)[0]
    app = faust.App(f"{prefix}-faustbase-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", store="memory://",
                    web_port=port, web_bind="127.0.0.1", web_host="127.0.0.1", datadir=datadir,
                    consumer_auto_offset_reset="earliest", autodiscover=False)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "t0": 0.0}

    @app.agent(topic)
    async def nothing(stream):
        async for _ in stream:
            if seen["n"] == 0:
                seen["t0"] = time.perf_counter()
            seen["n"] += 1
            if seen["n"] >= n:
                rate = (n - 1) / (time.perf_counter() - seen["t0"])
                print(orjson.dumps({"faust_agent_eps": round(rate)}).decode(), flush=True)
                # A throwaway measuring process (memory store, its own group): nothing to shut down cleanly.
                os._exit(0)

    faust.Worker(app, loglevel="ERROR", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
