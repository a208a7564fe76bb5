-- Delivery feedback from senders (cdp.actions.feedback): one row per (action, status, time) reported.
CREATE TABLE IF NOT EXISTS cdp.action_feedback (
    action_id String,
    status LowCardinality(String),
    at DateTime64(3, 'UTC'),
    detail String,
    received_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(at)
ORDER BY (action_id, status, at)
SETTINGS non_replicated_deduplication_window = 10000;
