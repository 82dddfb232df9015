-- Quotas over long windows (calls per day per principal and tool, …), kept in PostgreSQL
-- so they hold across restarts and replicas. One row per rule, caller, target and window;
-- the increment is a single conditional upsert, so concurrent replicas never overshoot.
CREATE TABLE quota_usage (
    rule          TEXT NOT NULL,
    subject       TEXT NOT NULL,
    target        TEXT NOT NULL,
    window_start  TIMESTAMPTZ NOT NULL,
    used          BIGINT NOT NULL,
    PRIMARY KEY (rule, subject, target, window_start)
);
CREATE INDEX quota_usage_window_idx ON quota_usage (window_start);
