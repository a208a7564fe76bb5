-- What a split needs of the events (docs/identity.md): each event's primary identifier (the one that chose its
-- person), and the events a split moved to another person.
ALTER TABLE cdp.events ADD COLUMN IF NOT EXISTS id_hash String DEFAULT '';

-- One row per event a split reassigned: message_id -> the OneID it belongs to since (the latest `at` wins, so a
-- later split of the same person reassigns it again).
CREATE TABLE IF NOT EXISTS cdp.event_oneids (
    message_id String,
    oneid String,
    at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(at)
ORDER BY message_id
SETTINGS non_replicated_deduplication_window = 10000;

-- cdp.events_resolved (first made in 0005): every column of cdp.events (FINAL), oneid replaced by the person the
-- event belongs to now: a split's reassignment first, then the chain of merges (cdp.oneid_current); oneid_original
-- as the event was sunk. Both joins are hash joins on small mappings, not a lookup per event.
CREATE OR REPLACE VIEW cdp.events_resolved AS
SELECT e.* REPLACE (if(r.oneid != '', r.oneid, e.oneid) AS oneid)
FROM (
    SELECT ev.* REPLACE (if(o.oneid != '', o.oneid, ev.oneid) AS oneid), ev.oneid AS oneid_original
    FROM cdp.events AS ev FINAL
    LEFT JOIN (SELECT message_id, argMax(oneid, at) AS oneid FROM cdp.event_oneids GROUP BY message_id) AS o
        ON o.message_id = ev.message_id
) AS e
LEFT JOIN cdp.oneid_current AS r ON r.from_oneid = e.oneid
