-- The Scheduler's bookkeeping (actors/src/scheduler.rs): one row per background job,
-- updated by whichever replica holds the scheduler's advisory lock (the leader). A new
-- leader reads `last_started_at` so a job does not run again early after a failover.
CREATE TABLE scheduler_jobs (
    name              TEXT PRIMARY KEY,
    last_started_at   TIMESTAMPTZ,
    last_finished_at  TIMESTAMPTZ,
    last_status       TEXT,          -- ok, failed
    last_detail       TEXT,          -- what the run did, or why it failed
    last_runner       TEXT           -- host and pid of the replica that ran it
);
