-- The link writer's decisions, as evidence for `cdp profile` and analysts: every link it made and every link it
-- refused, with the event that proposed it. Same conventions as 0004: ReplacingMergeTree collapses a row a replayed
-- batch wrote again (the link writer makes the same decisions again, so every column is the same), the
-- deduplication window makes a retried insert with the same token a no-op, monthly partitions on `at`, which a
-- replay does not change (the event's time).

-- One row per link made: id_hash's person was joined to other_hash's (the event's primary), under oneid.
CREATE TABLE IF NOT EXISTS cdp.identity_links (
    at DateTime64(3, 'UTC'),
    message_id String,
    id_type LowCardinality(String),
    id_hash String,
    other_type LowCardinality(String),
    other_hash String,
    oneid String,
    rule_version UInt32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (id_hash, other_hash, message_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per link refused: id_hash (the lower-priority identifier, left in other_oneid's person) was not joined to
-- oneid's person (the one the event went to), for `reason` (unique, limit, limit_window, max_identifiers,
-- max_merges, split; with the type whose rule it was, e.g. unique:user_id).
CREATE TABLE IF NOT EXISTS cdp.identity_refusals (
    at DateTime64(3, 'UTC'),
    message_id String,
    reason LowCardinality(String),
    id_type LowCardinality(String),
    id_hash String,
    id_masked String,
    oneid String,
    other_oneid String,
    rule_version UInt32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (id_hash, other_oneid, message_id, reason)
SETTINGS non_replicated_deduplication_window = 10000;

-- The event that caused a merge ('' for rows written without one: splits, earlier rows).
ALTER TABLE cdp.identity_merges ADD COLUMN IF NOT EXISTS message_id String;
