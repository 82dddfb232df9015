-- The audit trail: tool calls, events (permission decisions, logins, lifecycle, config and
-- secret changes, …) and model requests, written in hash-chained batches by the
-- AuditWriter (actors/src/audit/writer.rs). docs/audit.md describes the guarantees and
-- has ready SQL for an auditor's questions.
--
-- Every row carries `batch_seq`, the batch it was written in. `audit_batches` holds one
-- row per batch: for each of its rows a 33-byte entry (table tag, id, first 16 bytes of
-- the SHA-256 of the row's canonical encoding — actors/src/audit/store.rs `row_hash`),
-- and a hash chained over the previous batch's hash, the sequence number and the SHA-256
-- of the entries. `warden audit verify` recomputes both from the rows as they stand and
-- names the first row or batch that no longer matches.
--
-- Payloads are `json`, not `jsonb`: json keeps the exact text Warden wrote, so the
-- writer can hash rows itself (no hashing work inside PostgreSQL on the write path) and
-- verify recomputes the same bytes. `->`, `->>` and casts to jsonb work as usual.

CREATE TABLE mcp_tool_executions (
    id                UUID PRIMARY KEY,            -- UUIDv7: time-ordered; the replay key
    trace_id          TEXT NOT NULL,               -- W3C trace id, 32 hex characters
    session_id        TEXT,
    user_id           TEXT,
    client_id         TEXT,
    server_name       TEXT NOT NULL,
    tool_name         TEXT NOT NULL,               -- the upstream's own name
    requested_name    TEXT NOT NULL,               -- what the client called (server__tool)
    input             JSON,                       -- arguments, redacted
    input_truncated   BOOLEAN NOT NULL DEFAULT FALSE,
    input_sha256      BYTEA,                       -- of the full redacted input, when truncated
    output            JSON,                       -- the result, redacted
    output_truncated  BOOLEAN NOT NULL DEFAULT FALSE,
    output_sha256     BYTEA,
    status            TEXT NOT NULL CHECK (status IN
                          ('success', 'error', 'denied', 'timeout', 'cancelled', 'rate_limited')),
    error             TEXT,
    started_at        TIMESTAMPTZ NOT NULL,
    completed_at      TIMESTAMPTZ NOT NULL,
    duration_us       BIGINT NOT NULL,
    batch_seq         BIGINT
);
CREATE INDEX mcp_tool_executions_user_time ON mcp_tool_executions (user_id, started_at);
CREATE INDEX mcp_tool_executions_trace ON mcp_tool_executions (trace_id);
CREATE INDEX mcp_tool_executions_tool_time ON mcp_tool_executions (server_name, tool_name, started_at);
CREATE INDEX mcp_tool_executions_status_time ON mcp_tool_executions (status, started_at)
    WHERE status <> 'success';
CREATE INDEX mcp_tool_executions_time ON mcp_tool_executions USING brin (started_at);
CREATE INDEX mcp_tool_executions_batch ON mcp_tool_executions (batch_seq);

CREATE TABLE audit_events (
    id           UUID PRIMARY KEY,
    trace_id     TEXT,
    occurred_at  TIMESTAMPTZ NOT NULL,
    kind         TEXT NOT NULL,      -- permission.decision, auth.login, server.lifecycle, …
    actor_kind   TEXT NOT NULL,      -- user, client, system
    actor_id     TEXT,
    subject      TEXT,               -- a tool, a server, a secret's name, a token id
    decision     TEXT,               -- allow, deny, or NULL
    reason       TEXT,
    attributes   JSON NOT NULL DEFAULT '{}'::json,
    batch_seq    BIGINT
);
CREATE INDEX audit_events_actor_time ON audit_events (actor_id, occurred_at);
CREATE INDEX audit_events_trace ON audit_events (trace_id);
CREATE INDEX audit_events_kind_time ON audit_events (kind, occurred_at);
CREATE INDEX audit_events_denied_time ON audit_events (occurred_at) WHERE decision = 'deny';
CREATE INDEX audit_events_time ON audit_events USING brin (occurred_at);
CREATE INDEX audit_events_batch ON audit_events (batch_seq);

CREATE TABLE ai_requests (
    id                  UUID PRIMARY KEY,
    trace_id            TEXT NOT NULL,
    user_id             TEXT,
    client_id           TEXT,
    session_id          TEXT,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,       -- the model that answered
    requested_model     TEXT,                -- the model the client asked for (aliases)
    input_tokens        BIGINT,
    output_tokens       BIGINT,
    cache_read_tokens   BIGINT,
    cache_write_tokens  BIGINT,
    cost_microdollars   BIGINT,
    latency_ms          BIGINT,
    ttft_ms             BIGINT,              -- time to first token (streaming)
    status              TEXT NOT NULL,       -- success, error, denied, timeout, cancelled, rate_limited
    error               TEXT,
    streaming           BOOLEAN NOT NULL DEFAULT FALSE,
    created_at          TIMESTAMPTZ NOT NULL,
    batch_seq           BIGINT
);
CREATE INDEX ai_requests_user_time ON ai_requests (user_id, created_at);
CREATE INDEX ai_requests_trace ON ai_requests (trace_id);
CREATE INDEX ai_requests_model_time ON ai_requests (model, created_at);
CREATE INDEX ai_requests_time ON ai_requests USING brin (created_at);
CREATE INDEX ai_requests_batch ON ai_requests (batch_seq);

CREATE TABLE audit_batches (
    seq         BIGINT PRIMARY KEY,
    prev_hash   BYTEA NOT NULL,              -- the previous batch's hash (32 zero bytes first)
    hash        BYTEA NOT NULL,              -- sha256(prev_hash || int8send(seq) || sha256(entries))
    row_count   INTEGER NOT NULL,
    entries     BYTEA NOT NULL,              -- row_count × (tag 1 byte, id 16, row hash 16)
    first_at    TIMESTAMPTZ NOT NULL,
    last_at     TIMESTAMPTZ NOT NULL,
    written_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    writer      TEXT NOT NULL,               -- host and pid of the Warden that wrote it
    replayed    BOOLEAN NOT NULL DEFAULT FALSE, -- came from the local spool
    pruned_at   TIMESTAMPTZ                  -- rows deleted by retention
);
CREATE INDEX audit_batches_last_at ON audit_batches (last_at) WHERE pruned_at IS NULL;

-- Timestamps as ISO 8601 UTC text, whatever the session's TimeZone (for search output).
CREATE FUNCTION warden_audit_ts(t TIMESTAMPTZ) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
$$;
