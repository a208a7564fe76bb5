"""Analytics over ClickHouse: the SQL of funnels, retention, attribution, ROI, A/B tests, RFM and paths, their
tables, and the HTML report. Pure: queries run through a function the caller gives (``ops.worker.query``)."""
