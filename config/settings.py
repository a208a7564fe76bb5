"""Deployment settings: ``CDP_*`` environment variables, or a ``.env`` file in the working directory."""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDP_", env_file=".env", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    clickhouse_url: str = "chdb://.local/clickhouse"
    rules_dir: Path = Field(default=Path("rules"))
    topic_prefix: str = Field(default="cdp", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    # The admin endpoints (`cdp sql`, `cdp costs load`: streams/admin.py), on a listener of their own, never the
    # web port's (which carries the public collector). Port 0: a free one, written to the worker file.
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=0, ge=0, le=65535)
    # How long `cdp sql` waits for a worker that holds the embedded ClickHouse while it starts.
    worker_wait_s: float = Field(default=90.0, ge=0)
    write_keys: str = ""
    pii_salt: str = ""
    data_dir: Path = Path(".local")
    # Partitions of the topics the pipeline creates; the unit of parallelism (one worker process per few).
    partitions: int = Field(default=4, ge=1, le=1024)
    # Replicas of every topic the pipeline creates, Faust's changelog and internal topics too. 1 for the local
    # one-broker cluster; production runs 3, with the brokers' min.insync.replicas=2 (acks=all then survives one).
    replication_factor: int = Field(default=1, ge=1, le=32)
    # Event time: how late an event may arrive and still be counted before timers fire past it.
    allowed_lateness_s: float = Field(default=5.0, ge=0)
    # How often an idle ingest tells downstream that event time has moved on (drives timers when no events come).
    heartbeat_s: float = Field(default=1.0, gt=0)
    # messageId de-duplication window (event time), per person.
    dedupe_window_s: float = Field(default=7 * 86_400, gt=0)
    # Events more than this far ahead of the clock are flagged and timed at receipt instead.
    max_future_s: float = Field(default=86_400, gt=0)
    # Ingest: most raw records handled per batch.
    ingest_batch: int = Field(default=5000, ge=1)
    # ClickHouse batches (core.batching): a partition's envelopes go into one insert until it holds this many
    # events or this many envelopes, or until the ingest that sent them has caught up with its input (then at once).
    sink_batch_rows: int = Field(default=20_000, ge=1)
    sink_batch_envelopes: int = Field(default=50, ge=1)
    # ... and, while the ingest is caught up (live traffic), at most this often per partition: the most an event
    # waits for its insert, and so for the actions it fires.
    sink_flush_ms: int = Field(default=200, ge=0)
    # Partitions' batches carried out at once (their ClickHouse inserts run side by side: the engine does not hold
    # Python's lock while it parses and writes). A partition's own batches always go one after another.
    sink_insert_threads: int = Field(default=2, ge=1, le=64)
    # Person stage: most person states kept decoded in memory beyond those being written (least recently used
    # go first); a person not among them is read from the table again.
    state_cache_persons: int = Field(default=50_000, ge=0)
    # Kafka security, passed through to every client.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    log_level: str = "WARNING"
    # Collector: how long to wait for Kafka's acknowledgement before answering 503 (retry).
    collector_ack_timeout_s: float = Field(default=10.0, gt=0)
    # Collector: bytes of accepted events it may hold while Kafka has not acknowledged them. Past it, a request is
    # answered 503 (retry) at once: a slow broker under a burst slows clients down instead of filling memory.
    collector_max_inflight_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # What this worker process runs: "ingest", "persons" or both. Ingest-only workers need no ClickHouse and no
    # state, so ingestion scales out separately from the person stage (which holds the embedded ClickHouse).
    roles: str = Field(default="ingest,persons", pattern=r"^(ingest|persons)(,(ingest|persons))?$")

    @property
    def runs_ingest(self) -> bool:
        return "ingest" in self.roles.split(",")

    @property
    def runs_persons(self) -> bool:
        return "persons" in self.roles.split(",")

    @property
    def salt_topic(self) -> str:
        """Where a deployment without ``CDP_PII_SALT`` keeps the salt its first worker made (compacted)."""
        return self.topic("internal.salt")

    @cached_property
    def salt(self) -> str:
        """The salt of identifier hashes and OneIDs: ``CDP_PII_SALT``, else the deployment's own, which its first
        worker made and keeps on ``<prefix>.internal.salt`` (``streams.kafka.sync_salt`` copies it to
        ``<CDP_DATA_DIR>/pii_salt``, 0600, where this reads it; with neither, one is made there). So no deployment
        runs unsalted (a OneID or hash of an unsalted phone number can be found by trying every number), and a
        replacement worker with an empty data directory uses the salt the others use. Changing it re-keys every
        person."""
        if self.pii_salt:
            return self.pii_salt
        path = self.data_dir / "pii_salt"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"pii_salt.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # whole or not at all; of two processes making it at once, the first one's is kept
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_text().strip()

    @cached_property
    def resolved_rules_dir(self) -> Path:
        """The configured rules directory, else the defaults shipped with the package."""
        if self.rules_dir.is_dir():
            return self.rules_dir
        return PACKAGE_RULES_DIR

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"

    @property
    def raw_topic(self) -> str:
        return self.topic("events.raw")

    @property
    def dlq_topic(self) -> str:
        return self.topic("events.dlq")

    @property
    def person_events_topic(self) -> str:
        """Internal: validated events in envelopes, partitioned by person."""
        return self.topic("internal.events-by-person")

    @property
    def identity_topic(self) -> str:
        """Events the ingest could not resolve to one known person: the link writer's input (one partition)."""
        return self.topic("internal.identity")

    @property
    def identity_directory_topic(self) -> str:
        """What the link writer decided (``i:<hash>`` -> OneID, ``m:<oneid>`` -> survivor), compacted."""
        return self.topic("internal.identity-directory")

    @property
    def profile_changes_topic(self) -> str:
        return self.topic("profile.changes")

    def action_topic(self, channel: str) -> str:
        return self.topic(f"actions.{channel}")

    @property
    def feedback_topic(self) -> str:
        return self.topic("actions.feedback")

    @property
    def app_id(self) -> str:
        """Faust app id and consumer group of the person stage. An ingest-only worker has an id of its own, so it
        never joins (and rebalances) the person stage's group."""
        return f"{self.topic_prefix}-pipeline" if self.runs_persons else f"{self.topic_prefix}-ingest-worker"

    @property
    def ingest_group(self) -> str:
        return f"{self.topic_prefix}-ingest"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state" / self.topic_prefix

    @property
    def worker_file(self) -> Path:
        """Written by a running worker so `cdp sql` can reach it (embedded ClickHouse allows one process)."""
        return self.data_dir / f"worker-{self.topic_prefix}.json"
