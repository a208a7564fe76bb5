"""Prometheus metrics of the worker (served at /metrics)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

events_in = Counter("cdp_events_in_total", "raw records read", registry=REGISTRY)
events_ok = Counter("cdp_events_valid_total", "raw records that were valid events", registry=REGISTRY)
bad_rows = Counter("cdp_bad_rows_total", "records dead-lettered", ["stage", "reason"], registry=REGISTRY)
duplicates = Counter("cdp_events_duplicate_total", "events dropped as messageId duplicates", registry=REGISTRY)
events_sunk = Counter("cdp_events_sunk_total", "events written to ClickHouse", registry=REGISTRY)
actions = Counter("cdp_actions_total", "actions emitted", ["channel", "rule"], registry=REGISTRY)
dropped = Counter("cdp_dropped_total", "outputs dropped, by reason", ["reason"], registry=REGISTRY)
watermark_lag = Gauge("cdp_watermark_lag_seconds", "wall clock minus event-time watermark", ["partition"],
                      registry=REGISTRY)
sink_seconds = Histogram("cdp_sink_insert_seconds", "ClickHouse insert time", ["table"], registry=REGISTRY)
envelope_seconds = Histogram("cdp_envelope_seconds", "time to process one envelope", registry=REGISTRY)
collector_requests = Counter("cdp_collector_requests_total", "collector requests by endpoint and status",
                             ["endpoint", "status"], registry=REGISTRY)
collector_events = Counter("cdp_collector_events_total", "events accepted or rejected by the collector", ["outcome"],
                           registry=REGISTRY)
identifiers_dropped = Counter("cdp_identifiers_dropped_total",
                              "identifiers refused as empty, placeholder, malformed or blocked (event kept)", ["type"],
                              registry=REGISTRY)
future_timestamps = Counter("cdp_events_future_timestamp_total", "events whose timestamp was too far ahead to trust",
                            registry=REGISTRY)
past_timestamps = Counter("cdp_events_past_timestamp_total",
                          "events whose time came out before 1970 (a sentAt far ahead of their timestamp)",
                          registry=REGISTRY)
ingest_failures = Counter("cdp_ingest_failures_total",
                          "errors the ingest loop met, by kind: unsupported_codec and corrupt_batch (a raw record "
                          "batch it cannot read), kafka (a broker request, write or commit that failed; retried)",
                          ["kind"],
                          registry=REGISTRY)
ingest_stalled_partitions = Gauge("cdp_ingest_stalled_partitions",
                                  "raw partitions whose reading stopped at a record batch the ingest cannot read",
                                  registry=REGISTRY)
ingest_failing = Gauge("cdp_ingest_failing",
                       "1 while the ingest's Kafka requests keep failing (retried from the last commit), else 0",
                       registry=REGISTRY)
sink_retries = Counter("cdp_sink_retries_total",
                       "ClickHouse inserts tried again, by table and the failure's kind (transient, unknown: the same "
                       "insert after a wait; rejected: halved, to find the rows refused)", ["table", "kind"],
                       registry=REGISTRY)
directory_lag = Gauge("cdp_identity_directory_lag_records",
                      "records of the identity directory topic this ingest's replica has not applied yet",
                      registry=REGISTRY)
directory_hits = Counter("cdp_identity_directory_hits_total",
                         "events whose identifiers the directory replica resolved to one person (sent on directly)",
                         registry=REGISTRY)
directory_misses = Counter("cdp_identity_directory_misses_total",
                           "events the directory replica could not resolve (an identifier it does not know, two "
                           "persons): sent to the link writer", registry=REGISTRY)
identity_events = Counter("cdp_identity_events_total",
                          "events the link writer resolved (those the ingest's directory could not)", registry=REGISTRY)
identity_links = Counter("cdp_identity_links_total", "identity links made", registry=REGISTRY)
identity_merges = Counter("cdp_identity_merges_total", "OneIDs merged into another", registry=REGISTRY)
identity_refusals = Counter("cdp_identity_refusals_total", "identity links refused, by the rule they would break",
                            ["reason"], registry=REGISTRY)
identity_splits = Counter("cdp_identity_splits_total", "identity splits carried out", registry=REGISTRY)
identifiers_per_person = Histogram("cdp_identifiers_per_person", "identifiers of a person when a link changed it",
                                   buckets=(1, 2, 3, 5, 10, 20, 50, 100, 200), registry=REGISTRY)
