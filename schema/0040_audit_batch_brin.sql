-- `batch_seq` is written in increasing order, batch after batch, so a BRIN index finds a
-- batch's rows as well as a B-tree does for what reads it (`warden audit verify` asks for
-- ranges of batches, retention for a bounded set of old ones) at a fraction of the cost
-- per inserted row: the B-trees on `batch_seq` were about a quarter of PostgreSQL's work
-- per audit row (docs/benchmarks.md, "Audit trail"). 16 pages per range is about one
-- batch of 1,000 rows.
DROP INDEX mcp_tool_executions_batch;
DROP INDEX audit_events_batch;
DROP INDEX ai_requests_batch;
CREATE INDEX mcp_tool_executions_batch ON mcp_tool_executions USING brin (batch_seq)
    WITH (pages_per_range = 16);
CREATE INDEX audit_events_batch ON audit_events USING brin (batch_seq)
    WITH (pages_per_range = 16);
CREATE INDEX ai_requests_batch ON ai_requests USING brin (batch_seq)
    WITH (pages_per_range = 16);
