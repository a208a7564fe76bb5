"""Bad rows: what the pipeline keeps of an event it could not process, on ``cdp.events.dlq``.

A bad row carries the original bytes (as text, or base64 when they are not UTF-8) so it can be replayed after a
rule or schema fix; ``stage`` and ``reason`` are also Kafka headers so operators can filter without decoding.
"""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

BAD_ROW_SCHEMA_VERSION = 2  # 2: original headers kept

# Reasons whose payload is not an event but a record of what failed (an envelope of the internal topic, a person's
# timers, a row ClickHouse refused): kept for the operator, never replayed to the raw topic.
NOT_EVENTS = frozenset({"bad_envelope", "timer_failed", "sink_rejected"})


class Stage(StrEnum):
    decode = "decode"  # not JSON, or not a JSON object
    validate = "validate"  # JSON, but not a valid event
    process = "process"  # valid, but a pipeline step failed on it
    sink = "sink"  # processed, but ClickHouse refused its row (the payload is the row)


# The Kafka headers of a bad row: its stage and reason, readable without decoding the row (`cdp dlq stats`).
STAGE_HEADER = "cdp-error-stage"
REASON_HEADER = "cdp-error-reason"


class BadRow(BaseModel):
    schema_version: int = BAD_ROW_SCHEMA_VERSION
    stage: Stage
    reason: str = Field(description="short, stable, machine-readable cause, e.g. invalid_json, schema")
    errors: list[dict[str, Any]] = Field(default_factory=list)
    payload: str = Field(description="the original message value, as text")
    payload_encoding: str = Field(default="utf-8", description="utf-8, or base64 when the bytes were not UTF-8")
    key: str | None = None
    # A Kafka header's value may be null (kept as null).
    headers: dict[str, str | None] = Field(default_factory=dict, description="the original message's Kafka headers")
    source: dict[str, Any] = Field(default_factory=dict, description="topic, partition, offset it was read at")
    received_at: str

    @classmethod
    def of(cls, raw: bytes, stage: Stage, reason: str, errors: list[dict[str, Any]], received_at: str,
           **where: Any) -> BadRow:
        """The bad row keeping ``raw`` (``where``: its key, headers, source)."""
        payload, enc = cls.encode_payload(raw)
        return cls(stage=stage, reason=reason, errors=errors, payload=payload, payload_encoding=enc,
                   received_at=received_at, **where)

    @staticmethod
    def encode_payload(raw: bytes) -> tuple[str, str]:
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii"), "base64"

    def original_bytes(self) -> bytes:
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8")

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        return [(STAGE_HEADER, self.stage.value.encode()), (REASON_HEADER, self.reason.encode())]
