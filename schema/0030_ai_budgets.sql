-- AI gateway budgets (ai.budgets in the profile): what each budget's counter has used in
-- its current window, kept here so budgets hold across restarts and replicas
-- (src/ai/budgets.rs). One row per budget, subject and calendar window (UTC): `subject`
-- is the user's id, or '*' for a budget shared by everyone it applies to. A request is
-- checked against these counters before it is sent and charged (one upsert) after it
-- ran. The requests themselves are rows of `ai_requests` (the audit trail).
CREATE TABLE ai_budget_usage (
    budget             TEXT NOT NULL,
    subject            TEXT NOT NULL,
    window_start       TIMESTAMPTZ NOT NULL,
    cost_microdollars  BIGINT NOT NULL DEFAULT 0,
    tokens             BIGINT NOT NULL DEFAULT 0,
    requests           BIGINT NOT NULL DEFAULT 0,
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (budget, subject, window_start)
);
CREATE INDEX ai_budget_usage_window ON ai_budget_usage (window_start);
