-- Merge-aware reading of events: each OneID resolved to its person's current surviving OneID.
--
-- cdp.oneid_current: one row per OneID that is currently merged into another: (from_oneid, oneid), where oneid
-- is the end of its chain of merges (A into B, later B into C: A -> C). A from_oneid's latest identity_merges row
-- is its state; a latest row with op = 'split' ends its merge, so it (and whatever was merged into it) is its
-- own person again. Resolution is recursive over this small mapping, bounded at 64 hops so that a cycle written by
-- mistake cannot loop forever.
CREATE VIEW IF NOT EXISTS cdp.oneid_current AS
WITH RECURSIVE
    edges AS (
        SELECT from_oneid, argMax(into_oneid, at) AS into_oneid
        FROM cdp.identity_merges
        GROUP BY from_oneid
        HAVING argMax(op, at) = 'merge' AND into_oneid != '' AND into_oneid != from_oneid
    ),
    chain AS (
        SELECT from_oneid, into_oneid, 1 AS hops FROM edges
        UNION ALL
        SELECT c.from_oneid AS from_oneid, e.into_oneid AS into_oneid, c.hops + 1 AS hops
        FROM chain AS c INNER JOIN edges AS e ON e.from_oneid = c.into_oneid
        WHERE c.hops < 64
    )
SELECT from_oneid, argMax(into_oneid, hops) AS oneid FROM chain GROUP BY from_oneid;

-- cdp.events_resolved: every column of cdp.events (FINAL), oneid replaced by the current surviving OneID, and
-- oneid_original as the event was sunk. A hash join on the small mapping, not a lookup per event.
-- A view's columns are fixed when it is created: a migration that adds columns to cdp.events must repeat this
-- CREATE OR REPLACE VIEW statement unchanged for them to appear here.
CREATE OR REPLACE VIEW cdp.events_resolved AS
SELECT e.* REPLACE (if(r.oneid != '', r.oneid, e.oneid) AS oneid), e.oneid AS oneid_original
FROM cdp.events AS e FINAL
LEFT JOIN cdp.oneid_current AS r ON r.from_oneid = e.oneid
