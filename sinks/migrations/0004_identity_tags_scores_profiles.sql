-- Identity graph, tag and score history, current profiles: the contract's tables beside events and actions.
-- Same conventions as 0001: ReplacingMergeTree collapses a row a retried insert duplicated, the deduplication window
-- makes a retried insert with the same token a no-op, monthly partitions on a time that never changes for a key
-- (ReplacingMergeTree only replaces rows within one partition).

-- One row per identifier; a later version (re-linked to another OneID by a merge) replaces it: latest updated_at
-- wins. first_seen stays the same for an identifier across versions, so all its versions share a partition.
CREATE TABLE IF NOT EXISTS cdp.identities (
    identifier_type LowCardinality(String),
    identifier_hash String,
    identifier_masked String,
    oneid String,
    first_seen DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(first_seen)
ORDER BY (identifier_type, identifier_hash)
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per merge or split of a OneID. op = 'merge': from_oneid's person is now into_oneid's; op = 'split'
-- (merges are reversible): from_oneid stands alone again (into_oneid names the OneID it left). For a from_oneid the
-- row with the latest `at` is its current state; earlier rows are kept as history (the key includes `at`), so
-- readers take argMax(..., at) per from_oneid (see the view cdp.oneid_current in 0005).
CREATE TABLE IF NOT EXISTS cdp.identity_merges (
    from_oneid String,
    into_oneid String,
    at DateTime64(3, 'UTC'),
    reason LowCardinality(String),
    op LowCardinality(String) DEFAULT 'merge'
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (from_oneid, at)
SETTINGS non_replicated_deduplication_window = 10000;

-- Append-only history; a row is identified by the event (message_id) that caused it, so a replayed event's
-- change collapses into the first.
CREATE TABLE IF NOT EXISTS cdp.tag_changes (
    oneid String,
    tag LowCardinality(String),
    op LowCardinality(String),
    at DateTime64(3, 'UTC'),
    rule_version UInt32,
    message_id String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (oneid, tag, at, op, message_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS cdp.score_changes (
    oneid String,
    model LowCardinality(String),
    item String,
    delta Float64,
    score Float64,
    at DateTime64(3, 'UTC'),
    message_id String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (oneid, model, item, at, message_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- The current profile per OneID, rewritten on every change: latest updated_at wins. Not partitioned: updated_at
-- moves with every version and a profile has no fixed time to partition on, and replacement needs one partition.
CREATE TABLE IF NOT EXISTS cdp.profiles (
    oneid String,
    tags Array(String),
    scores Map(String, Float64),
    lifecycle LowCardinality(String),
    rfm String,
    updated_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY oneid
SETTINGS non_replicated_deduplication_window = 10000
