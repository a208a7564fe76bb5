-- Events and actions: the skeleton's tables. ReplacingMergeTree collapses a row a retried insert duplicated;
-- non_replicated_deduplication_window makes a retried insert with the same token insert nothing at all.
CREATE DATABASE IF NOT EXISTS cdp;

CREATE TABLE IF NOT EXISTS cdp.events (
    message_id String,
    oneid String,
    type LowCardinality(String),
    event LowCardinality(String),
    name String,
    ts DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    properties String,
    identities Map(String, String),
    raw_partition UInt32,
    raw_offset UInt64
) ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (oneid, ts, message_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS cdp.actions (
    action_id String,
    oneid String,
    rule_id LowCardinality(String),
    rule_version UInt32,
    channel LowCardinality(String),
    template LowCardinality(String),
    created_at DateTime64(3, 'UTC'),
    not_before DateTime64(3, 'UTC'),
    expires_at DateTime64(3, 'UTC'),
    reason String
) ENGINE = ReplacingMergeTree(created_at)
PARTITION BY toYYYYMM(created_at)
ORDER BY (action_id)
SETTINGS non_replicated_deduplication_window = 10000;
