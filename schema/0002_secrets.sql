-- The secret store: values encrypted with the master key (XChaCha20-Poly1305, bound to
-- the secret's name and owner so a ciphertext cannot be moved to another row).
-- `owner` is '' for shared secrets and a user name for per-user ones.
CREATE TABLE secrets (
    name        TEXT NOT NULL,
    owner       TEXT NOT NULL DEFAULT '',
    ciphertext  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, owner)
);
