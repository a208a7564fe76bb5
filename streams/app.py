"""The Faust application: topics, the person table, the agents and the web endpoints, wired from settings.

Data path (docs/architecture.md):
  cdp.events.raw --ingest (aiokafka batches, core.ingest)--> <prefix>.internal.events-by-person (envelopes)
  --persons agent (Faust, core.person)--> ClickHouse events/actions, cdp.actions.<channel>, persons table
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from typing import Any

import faust
import orjson
from faust.web import Request, Response
from prometheus_client import generate_latest

import core
from config.settings import Settings
from core.feedback import feedback_row
from rules.loader import RuleSet, load_rules
from schemas.actions import Channel
from schemas.bad_rows import BadRow
from sinks.clickhouse import FEEDBACK_COLUMNS, ClickHouseSink
from streams import metrics
from streams.admin import start_admin
from streams.collector import Collector, mount_on_faust
from streams.directory import DirectoryReplica
from streams.identity import LinkWriter
from streams.ingest import Ingest
from streams.kafka import batch_producer, faust_broker_url
from streams.persons import PersonStage
from streams.sink_writer import SinkWriter, rejected_bad_row
from streams.state import TableState

log = logging.getLogger("cdp.app")

# Sink batches processed ahead of their effects, over all partitions (bounded, so memory and redelivery after a
# crash stay small: 8 batches of at most CDP_SINK_BATCH_ROWS events). 8 rather than 4: two batches per partition
# of a 4-partition worker, so a partition that is behind has a next batch to fold its state writes into
# (PersonStage.take); person-stage CPU 10.1-10.5 against 10.4-12.1 µs/event in alternating runs.
PIPELINE_DEPTH = 8


class Pipeline:
    """Everything one worker runs; built by ``build_pipeline``, started by Faust."""

    def __init__(self, app: faust.App, settings: Settings, rules: RuleSet, stage: PersonStage | None,
                 ingest: Ingest | None, sink: ClickHouseSink | None, persons_agent: Any | None):
        self.app = app
        self.settings = settings
        self.rules = rules
        self.stage = stage
        self.ingest = ingest
        self.sink = sink
        self.persons_agent = persons_agent
        self.admin_token = secrets.token_urlsafe(24)
        self.started_at = time.time()


def build_pipeline(settings: Settings, *, rules: RuleSet | None = None, sink: ClickHouseSink | None = None,
                   with_ingest: bool | None = None, with_persons: bool | None = None,
                   store: str | None = None) -> Pipeline:
    """The worker's Faust app with the roles the settings name (``CDP_ROLES``), unless given here."""
    with_ingest = settings.runs_ingest if with_ingest is None else with_ingest
    with_persons = settings.runs_persons if with_persons is None else with_persons
    rules = rules if rules is not None else load_rules(settings.resolved_rules_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=faust_broker_url(settings),
        store=store or "rocksdb://",
        datadir=str(settings.state_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,  # the changelog's and Faust's own topics
        topic_allow_declare=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_in_thread=False,
        broker_commit_interval=1.0,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        # Envelopes are large (up to 700 KB): fetch many per partition per request.
        consumer_max_fetch_size=16 * 1024 * 1024,
        autodiscover=False,
        # One table write per person per envelope; the changelog is the table's durable copy.
        table_cleanup_interval=60.0,
    )
    stage: PersonStage | None = None
    persons_agent: Any = None
    if with_persons:
        # The memory store (agent tests) has no changelog to write; every real store does.
        changelog = not (store or "").startswith("memory")
        stage, persons_agent = _person_stage(app, settings, rules, sink, changelog)

    ingest = None
    if with_ingest:
        directory = DirectoryReplica(settings, settings.identity_directory_topic, settings.state_dir / "directory")
        ingest = Ingest(settings, rules, directory)
    pipeline = Pipeline(app, settings, rules, stage, ingest, sink, persons_agent)

    if ingest is not None:
        @app.task
        async def _ingest() -> None:
            await ingest.start()
            try:
                await ingest.run()
            finally:
                await ingest.stop()

    if with_ingest:
        # The HTTP collector rides with ingest: both are the way in, and neither needs ClickHouse or state.
        mount_on_faust(app, Collector(settings))

    admin: list[Any] = []  # the admin site's runner, once it serves

    @app.task
    async def _announce() -> None:
        if not with_persons:
            return  # the file tells `cdp sql` where the ClickHouse holder is: only a person-stage worker has it
        # The admin endpoints (`cdp sql`, `cdp costs load`) are a site of their own, off the collector's port.
        try:
            runner, admin_url = await start_admin(settings, pipeline.sink, pipeline.admin_token)
        except OSError as exc:
            log.error("admin endpoints not served on %s:%s (%s): `cdp sql` cannot reach this worker",
                      settings.admin_host, settings.admin_port, exc)
            runner, admin_url = None, None
        admin.append(runner)
        # `cdp sql` and `cdp replay` find a running worker through this file (0600: it holds the admin token).
        path = settings.worker_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps({"pid": os.getpid(), "url": f"http://{settings.web_host}:{settings.web_port}",
                                  "admin_url": admin_url, "token": pipeline.admin_token,
                                  "clickhouse": settings.clickhouse_url}))
        os.replace(tmp, path)

    @app.page("/healthz")
    async def healthz(web: Any, request: Request) -> Response:
        return web.json(health(pipeline))

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Request) -> Response:
        return web.bytes(generate_latest(metrics.REGISTRY), content_type="text/plain; version=0.0.4")

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode's stubs admit no coroutine receiver
    async def _cleanup(sender: Any, **kwargs: Any) -> None:
        try:
            settings.worker_file.unlink()
        except FileNotFoundError:
            pass
        for runner in admin:
            if runner is not None:
                await runner.cleanup()

    return pipeline


def _person_stage(app: faust.App, settings: Settings, rules: RuleSet, sink: ClickHouseSink | None,
                  changelog_to_kafka: bool) -> tuple[PersonStage, Any]:
    person_topic = app.topic(settings.person_events_topic, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
    action_topics = {c.value: app.topic(settings.action_topic(c.value), key_type=bytes, value_type=bytes,
                                        key_serializer="raw", value_serializer="raw") for c in Channel}
    # Person state: bytes in, bytes out (core.person encodes it; bytes types make Faust use the raw codec),
    # one RocksDB database per partition.
    table = app.Table("persons", key_type=bytes, value_type=bytes, partitions=settings.partitions, default=None)

    async def send_action(channel: str, key: bytes, value: bytes) -> Any:
        # Straight to aiokafka where there is a producer (Faust's per-message send path costs more than the
        # rest of an action's work); through Faust's topic in agent tests.
        if state.producer is not None:
            return await state.producer.send(settings.action_topic(channel), value, key=key)
        return await action_topics[channel].send(key=key, value=value)

    dlq_topic = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw")

    async def send_bad_row(key: bytes | None, row: BadRow) -> Any:
        value = row.model_dump_json().encode()
        if state.producer is not None:
            return await state.producer.send(settings.dlq_topic, value, key=key, headers=row.kafka_headers())
        return await dlq_topic.send(key=key, value=value, headers=row.kafka_headers())

    state = TableState(table, None)
    async def send_forward(partition: int, key: bytes, value: bytes) -> Any:
        if state.producer is not None:
            return await state.producer.send(settings.person_events_topic, value, key=key, partition=partition)
        return await person_topic.send(key=key, value=value, partition=partition)

    stage = PersonStage(rules, state, sink, send_action, settings.partitions, settings.person_events_topic,
                        int(settings.dedupe_window_s * 1000), settings.sink_batch_rows, settings.sink_batch_envelopes,
                        settings.state_cache_persons, settings.sink_insert_threads,
                        send_bad_row=send_bad_row, raw_topic=settings.raw_topic, send_forward=send_forward,
                        salt=settings.salt)
    _link_writer(app, settings, rules, sink, changelog_to_kafka, person_topic)

    @app.agent(person_topic, name="persons")
    async def persons(stream: Any) -> None:  # a faust.Stream (its stubs lack noack, take_events)
        # Pipelined: while sink batches' effects (ClickHouse insert, actions, state writes) are carried out, the
        # next envelopes are already processed. Each partition's batches are carried out strictly in order, by
        # that partition's own task (so one partition's insert does not wait for another's state writes), and an
        # envelope is acked (its offset becomes committable) only after its batch's effects are done. At most
        # PIPELINE_DEPTH batches are processed ahead of their effects, over all partitions.
        manual = stream.noack()
        ahead = asyncio.Semaphore(PIPELINE_DEPTH)
        chains: dict[int, tuple[asyncio.Queue[Any], asyncio.Future[None]]] = {}
        pending: dict[int, int] = {}  # batches queued or being carried out, by partition
        if changelog_to_kafka and state.producer is None:
            state.producer = batch_producer(settings, f"{settings.app_id}-state", linger_ms=0)
            await state.producer.start()

        async def carry_out(queue: asyncio.Queue[Any]) -> None:
            while True:
                fx, events = await queue.get()
                await stage.complete(fx)
                for event in events:
                    await manual.ack(event)
                ahead.release()
                pending[fx.partition] -= 1
                queue.task_done()

        def chain(partition: int) -> asyncio.Queue[Any]:
            if partition not in chains:
                queue: asyncio.Queue[Any] = asyncio.Queue()
                chains[partition] = (queue, asyncio.ensure_future(carry_out(queue)))
            return chains[partition][0]

        try:
            async for event in manual.events():
                partition, offset = event.message.partition, event.message.offset
                if stage.rewound(partition, offset):
                    # Read again from its last commit (a batch boundary): finish what is queued, then start the
                    # partition afresh so its batches and person states are formed exactly as the first time.
                    await chain(partition).join()
                    stage.reset_partition(partition)
                # Behind: this partition's earlier batches are not all carried out yet (queued or running).
                done = stage.take(partition, offset, event.value, event, pending.get(partition, 0) > 0)
                if done is not None:
                    await ahead.acquire()
                    pending[partition] = pending.get(partition, 0) + 1
                    chain(partition).put_nowait(done)
                for _, task in chains.values():
                    if task.done():
                        task.result()  # an effect failed for good: crash the agent rather than go on
        finally:
            for _, task in chains.values():
                task.cancel()
            if state.producer is not None:
                producer, state.producer = state.producer, None
                await producer.stop()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # as above
    async def _rebalanced(sender: Any, **kwargs: Any) -> None:
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == person_topic.get_topic_name()}
        stage.on_rebalance(assigned)

    feedback_topic = app.topic(settings.feedback_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                               value_serializer="raw")

    @app.agent(feedback_topic, name="feedback")
    async def feedback(stream: Any) -> None:  # a faust.Stream
        # Senders' reports are few next to events: batches of up to 500 or 1 s, one insert each. Faust acknowledges
        # a batch's events when the next is asked for, so its insert and bad rows are done (acknowledged) first;
        # the insert as the person stage's (SinkWriter: outages waited out, refused rows dead-lettered).
        writer = SinkWriter(sink) if sink is not None else None
        async for events in stream.take_events(500, within=1.0):
            lines, where = [], []
            bad: list[tuple[bytes | None, BadRow]] = []
            for ev in events:
                out = feedback_row(ev.value, int(ev.message.timestamp * 1000))
                source = {"topic": ev.message.topic, "partition": ev.message.partition, "offset": ev.message.offset}
                if isinstance(out, bytes):
                    lines.append(out)
                    where.append((ev.key, source))
                else:
                    out.source = source
                    bad.append((ev.key, out))
            if lines and writer is not None:
                first = events[0].message
                token = f"{first.topic}:{first.partition}:{first.offset}:{len(events)}"
                now_ms = int(time.time() * 1000)
                for r in await writer.insert("action_feedback", lines, FEEDBACK_COLUMNS, token):
                    key, source = where[r.index]
                    bad.append(rejected_bad_row(r, "action_feedback", now_ms, key, **source))
            # The stage's sender (tests replace it there).
            send = stage.send_bad_row or send_bad_row
            acks = [await send(key, row) for key, row in bad]
            for ack in acks:
                await ack
            for _, row in bad:
                metrics.bad_rows.labels(row.stage.value, row.reason).inc()
    return stage, persons


def _link_writer(app: faust.App, settings: Settings, rules: RuleSet, sink: ClickHouseSink | None,
                 changelog_to_kafka: bool, person_topic: Any) -> LinkWriter:
    """The link writer's agent (streams/identity.py): one partition, so one worker runs it at a time."""
    identity_topic = app.topic(settings.identity_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                               value_serializer="raw", partitions=1)
    table = app.Table("identity", key_type=bytes, value_type=bytes, partitions=1, default=None)
    state = TableState(table, None)
    topics: dict[str, Any] = {settings.person_events_topic: person_topic}

    async def send(topic: str, key: bytes | None, value: bytes, partition: int | None) -> Any:
        if state.producer is not None:
            return await state.producer.send(topic, value, key=key, partition=partition)
        t = topics.get(topic)
        if t is None:
            t = topics[topic] = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                                          value_serializer="raw")
        return await t.send(key=key, value=value, partition=partition)

    writer = LinkWriter(rules, state, sink, send, salt=settings.salt, partitions=settings.partitions,
                        topic=settings.identity_topic, person_topic=settings.person_events_topic,
                        directory_topic=settings.identity_directory_topic,
                        profile_topic=settings.profile_changes_topic, dlq_topic=settings.dlq_topic)

    @app.agent(identity_topic, name="identity")
    async def identity(stream: Any) -> None:  # a faust.Stream
        # Batches of envelopes: Faust acknowledges a batch's events when the next is asked for, so its effects
        # (ClickHouse, messages, records) are all done first.
        if changelog_to_kafka and state.producer is None:
            state.producer = batch_producer(settings, f"{settings.app_id}-identity", linger_ms=0)
            await state.producer.start()
        try:
            async for events in stream.take_events(500, within=0.5):
                fx = writer.process((ev.message.offset, ev.value) for ev in events)
                await writer.complete(fx)
        finally:
            if state.producer is not None:
                producer, state.producer = state.producer, None
                await producer.stop()

    return writer


def health(p: Pipeline) -> dict[str, Any]:
    ing = p.ingest
    stage = p.stage
    # A fault the ingest cannot get past by itself (a raw batch it cannot read, Kafka failing for a minute) too.
    ingest_faults = [] if ing is None else ing.faults()
    ingest_ready = ing is None or (ing.running and ing.consumer is not None and bool(ing.consumer.assignment())
                                   and not ingest_faults)
    persons_ready = stage is None or (stage.stopped is None and bool(p.app.consumer.assignment()))
    return {
        "status": "ok",
        "ready": ingest_ready and persons_ready,
        "roles": p.settings.roles,
        "app_id": p.settings.app_id,
        "rules_digest": p.rules.digest,
        # The core's per-event modules run compiled (core/native.py), or as plain Python (slower; same results).
        "compiled_core": core.NATIVE,
        "uptime_s": round(time.time() - p.started_at, 1),
        "ingest": None if ing is None else {
            "running": ing.running,
            "source": ing.source,
            "assigned": sorted(tp.partition for tp in ing.consumer.assignment()) if ing.consumer else [],
            "records_in": ing.records_in,
            "first_event_at": ing.first_event_at, "first_fetch_at": ing.first_fetch_at,
            "faults": ingest_faults,
        },
        "persons": None if stage is None else {
            "envelopes": stage.stats.envelopes, "events_sunk": stage.stats.events_sunk,
            "duplicates": stage.stats.duplicates, "actions": stage.stats.actions, "dropped": stage.stats.dropped,
            "bad_rows": stage.stats.bad_rows,
            "last_sunk_at": stage.stats.last_sunk_at, "timers_pending": len(stage.timers),
            "stopped": stage.stopped,
        },
    }
