-- Skills (src/skills/): reusable instructions for AI clients, each one Markdown file
-- with YAML frontmatter in the Agent Skills shape (`SKILL.md`: `name`, `description`,
-- then the instructions), distributed by Warden to whoever may read them
-- (GET /v1/skills) instead of every user cloning a repository.
--
-- Every change is a new version; nothing is overwritten, so an auditor can read what a
-- skill said on any day. A removal is a version without content. The current version of
-- a skill is its highest; one whose highest has no content is removed. Who changed what
-- is also in `audit_events` (`skill.changed`).
CREATE TABLE skill_versions (
    -- As src/skills/mod.rs `check_name` has it; export writes it into a path.
    name         TEXT NOT NULL CHECK (name ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND length(name) <= 64),
    version      INTEGER NOT NULL CHECK (version > 0),
    content      TEXT,                    -- the SKILL.md as uploaded; NULL: removed
    sha256       BYTEA,                   -- of `content`
    description  TEXT,                    -- from the frontmatter, for listings
    scopes       TEXT[] NOT NULL DEFAULT '{}', -- what a reader needs (all of them)
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by   TEXT NOT NULL,           -- user id, or cli:<os user> for `warden import`
    PRIMARY KEY (name, version),
    CHECK ((content IS NULL) = (sha256 IS NULL))
);
