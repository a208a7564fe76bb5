-- Marketing touchpoints and channel costs, for attribution and ROI (cdp attribution, cdp roi).
--
-- An event's UTM campaign (Segment's context.campaign: source, medium, name), as the app sent it; '' where the
-- event came without one. An event with a campaign_source is a touchpoint.
ALTER TABLE cdp.events ADD COLUMN IF NOT EXISTS campaign_source LowCardinality(String);
ALTER TABLE cdp.events ADD COLUMN IF NOT EXISTS campaign_medium LowCardinality(String);
ALTER TABLE cdp.events ADD COLUMN IF NOT EXISTS campaign_name String;

-- Spend per day and channel (source, medium) and campaign, loaded from a CSV by `cdp costs load`. Loading a
-- corrected file again replaces the rows of the same key: the latest updated_at wins (read with FINAL).
CREATE TABLE IF NOT EXISTS cdp.channel_costs (
    day Date,
    source LowCardinality(String),
    medium LowCardinality(String),
    campaign String,
    cost Float64,
    currency LowCardinality(String),
    updated_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(day)
ORDER BY (day, source, medium, campaign);

-- 0005's view, unchanged: a view's columns are fixed when it is created, so it is created again to show the
-- campaign columns added above.
CREATE OR REPLACE VIEW cdp.events_resolved AS
SELECT e.* REPLACE (if(r.oneid != '', r.oneid, e.oneid) AS oneid), e.oneid AS oneid_original
FROM cdp.events AS e FINAL
LEFT JOIN cdp.oneid_current AS r ON r.from_oneid = e.oneid
