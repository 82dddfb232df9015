-- Batches written side by side: the AuditWriter keeps up to `audit.write_concurrency`
-- batches in flight on separate connections, so PostgreSQL's index work for one batch
-- runs while another is being copied (docs/benchmarks.md, "Audit trail").
--
-- A batch now takes two numbers:
-- - `seq`, its identity, drawn from `audit_batch_seq` before its rows are copied (the
--   rows carry it in `batch_seq`). Numbers of batches that rolled back are never used,
--   and two batches in flight may commit in either order, so `seq` has gaps and need not
--   follow the chain.
-- - `position`, its place in the hash chain, taken at seal time under the chain's
--   advisory lock: consecutive from 1, no gaps. `warden audit verify` walks the chain by
--   `position`; a missing position is a deleted batch.
--
-- The chain hash is `sha256(prev_hash || position || sha256(entries))`. Batches written
-- before this migration were sealed with their `seq` in that place, and get
-- `position = seq` here (their seqs were consecutive), so they verify unchanged.
ALTER TABLE audit_batches ADD COLUMN position BIGINT;
UPDATE audit_batches SET position = seq;
ALTER TABLE audit_batches ALTER COLUMN position SET NOT NULL;
ALTER TABLE audit_batches ADD CONSTRAINT audit_batches_position_key UNIQUE (position);

CREATE SEQUENCE audit_batch_seq AS BIGINT;
SELECT setval('audit_batch_seq', coalesce(max(seq), 0) + 1, false) FROM audit_batches;

-- The entries are 33 bytes per row of hashes and ids: they do not compress, and trying
-- (pglz, on every batch) was ~5 % of PostgreSQL's work per batch. Stored out of line,
-- uncompressed.
ALTER TABLE audit_batches ALTER COLUMN entries SET STORAGE EXTERNAL;

-- `permission.decision` is the kind every governed call writes, so half of all event
-- rows would go into the (kind, occurred_at) B-tree for nothing: the queries for
-- decisions go by actor, by trace, or — for refusals — through
-- `audit_events_denied_time`, and a plain time range of them is served by the BRIN on
-- `occurred_at`. Leaving them out of this index was ~10 % of the writer's sustained rate
-- (docs/benchmarks.md, "Audit trail"). Lookups of the other kinds are unchanged.
DROP INDEX audit_events_kind_time;
CREATE INDEX audit_events_kind_time ON audit_events (kind, occurred_at)
    WHERE kind <> 'permission.decision';
