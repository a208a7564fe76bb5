-- Daily event counts per event name, kept up to date by a materialized view on every insert into cdp.events.
-- Counts are insert-time: a retried insert that ClickHouse deduplicated by token is not counted twice (inserts run
-- with deduplicate_blocks_in_dependent_materialized_views, and this table keeps a deduplication window too).
CREATE TABLE IF NOT EXISTS cdp.events_daily (
    day Date,
    event LowCardinality(String),
    events SimpleAggregateFunction(sum, UInt64),
    persons AggregateFunction(uniq, String)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, event)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS cdp.events_daily_mv TO cdp.events_daily AS
SELECT toDate(ts) AS day, event, count() AS events, uniqState(oneid) AS persons
FROM cdp.events
GROUP BY day, event;
