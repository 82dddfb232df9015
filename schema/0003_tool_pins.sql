-- Tool-definition pinning (the "rug-pull" defence). The first definition seen for a
-- tool is approved automatically; a later, different definition is recorded as pending
-- and the tool is withheld from clients until an operator approves it.
CREATE TABLE tool_pins (
    server_name          TEXT NOT NULL,
    tool_name            TEXT NOT NULL,
    approved_hash        TEXT NOT NULL,
    approved_definition  JSONB NOT NULL,
    pending_hash         TEXT,
    pending_definition   JSONB,
    first_seen_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    approved_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    changed_at           TIMESTAMPTZ,
    PRIMARY KEY (server_name, tool_name)
);
