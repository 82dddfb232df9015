-- The audit trail: tool calls, events (permission decisions, logins, lifecycle, config and
-- secret changes, …) and model requests, written in hash-chained batches by the
-- AuditWriter (actors/src/audit/writer.rs). docs/audit.md describes the guarantees and
-- has ready SQL for an auditor's questions.
--
-- Every row carries `batch_seq`, the batch it was written in. `audit_batches` holds one
-- row per batch: for each of its rows a 33-byte entry (table tag, id, first 16 bytes of
-- the SHA-256 of the row's canonical text), and a hash chained over the previous batch's
-- hash, the sequence number and the SHA-256 of the entries. `warden audit verify`
-- recomputes both and names the first row or batch that no longer matches.

CREATE TABLE mcp_tool_executions (
    id                UUID PRIMARY KEY,            -- UUIDv7: time-ordered; the replay key
    trace_id          TEXT NOT NULL,               -- W3C trace id, 32 hex characters
    session_id        TEXT,
    user_id           TEXT,
    client_id         TEXT,
    server_name       TEXT NOT NULL,
    tool_name         TEXT NOT NULL,               -- the upstream's own name
    requested_name    TEXT NOT NULL,               -- what the client called (server__tool)
    input             JSONB,                       -- arguments, redacted
    input_truncated   BOOLEAN NOT NULL DEFAULT FALSE,
    input_sha256      BYTEA,                       -- of the full redacted input, when truncated
    output            JSONB,                       -- the result, redacted
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
    attributes   JSONB NOT NULL DEFAULT '{}'::jsonb,
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

-- Timestamps in canonical text, whatever the session's TimeZone and DateStyle.
CREATE FUNCTION warden_audit_ts(t TIMESTAMPTZ) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
$$;

-- The entries of batch `p_seq` as the rows stand now: for each row, ordered by table
-- then id, the table tag, the id, and the first 16 bytes of the SHA-256 of the row's
-- canonical text (every column, bytea as hex, timestamps in UTC).
CREATE FUNCTION warden_audit_entries(p_seq BIGINT) RETURNS BYTEA
LANGUAGE sql STABLE AS $$
    SELECT coalesce(string_agg(entry, ''::bytea ORDER BY tag, id), ''::bytea)
    FROM (
        SELECT 1 AS tag, t.id,
               '\x01'::bytea || uuid_send(t.id) || substring(sha256(convert_to(ROW(
                   t.id, t.trace_id, t.session_id, t.user_id, t.client_id, t.server_name,
                   t.tool_name, t.requested_name, t.input, t.input_truncated,
                   encode(t.input_sha256, 'hex'), t.output, t.output_truncated,
                   encode(t.output_sha256, 'hex'), t.status, t.error,
                   warden_audit_ts(t.started_at), warden_audit_ts(t.completed_at),
                   t.duration_us, t.batch_seq)::text, 'UTF8')) FROM 1 FOR 16) AS entry
        FROM mcp_tool_executions t WHERE t.batch_seq = p_seq
        UNION ALL
        SELECT 2, e.id,
               '\x02'::bytea || uuid_send(e.id) || substring(sha256(convert_to(ROW(
                   e.id, e.trace_id, warden_audit_ts(e.occurred_at), e.kind, e.actor_kind,
                   e.actor_id, e.subject, e.decision, e.reason, e.attributes,
                   e.batch_seq)::text, 'UTF8')) FROM 1 FOR 16)
        FROM audit_events e WHERE e.batch_seq = p_seq
        UNION ALL
        SELECT 3, a.id,
               '\x03'::bytea || uuid_send(a.id) || substring(sha256(convert_to(ROW(
                   a.id, a.trace_id, a.user_id, a.client_id, a.session_id, a.provider,
                   a.model, a.requested_model, a.input_tokens, a.output_tokens,
                   a.cache_read_tokens, a.cache_write_tokens, a.cost_microdollars,
                   a.latency_ms, a.ttft_ms, a.status, a.error, a.streaming,
                   warden_audit_ts(a.created_at), a.batch_seq)::text, 'UTF8')) FROM 1 FOR 16)
        FROM ai_requests a WHERE a.batch_seq = p_seq
    ) rows
$$;
