-- Identity: users, service accounts and federated identities; Warden's own signing keys;
-- API keys; the OAuth 2.1 authorization server's clients, codes and refresh tokens; the
-- revocation deny-list. Every credential is stored hashed (SHA-256 for high-entropy
-- random values, Argon2id for passwords) or sealed under the master key (signing keys).

-- One row per identity. `name` is the principal's subject for local identities (users
-- and service accounts) and `issuer|sub` for federated ones, linked on first sight.
CREATE TABLE identities (
    id                UUID PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    kind              TEXT NOT NULL CHECK (kind IN ('user', 'service', 'federated')),
    roles             TEXT[] NOT NULL DEFAULT '{}',
    password_hash     TEXT,
    disabled          BOOLEAN NOT NULL DEFAULT FALSE,
    issuer            TEXT,
    external_subject  TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_login_at     TIMESTAMPTZ
);

-- Warden's signing keys. `private_key` is the PKCS#8 document sealed under the master key
-- (bound to the kid). The newest key without `retired_at` signs; a retired key keeps
-- verifying (and stays in the JWKS) until `verify_until`, the latest expiry of a token it
-- signed.
CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY,
    algorithm     TEXT NOT NULL,
    private_key   BYTEA NOT NULL,
    public_key    BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at    TIMESTAMPTZ,
    max_expires_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- API keys of service accounts (`wk_…`): only the SHA-256 of the key is kept.
CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    identity_id  UUID NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    prefix       TEXT NOT NULL,
    key_hash     BYTEA NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

-- OAuth clients registered dynamically (RFC 7591). Clients identified by an https URL
-- (Client ID Metadata Documents) are not stored: their document is fetched.
CREATE TABLE oauth_clients (
    client_id                   TEXT PRIMARY KEY,
    client_name                 TEXT,
    redirect_uris               TEXT[] NOT NULL,
    grant_types                 TEXT[] NOT NULL,
    token_endpoint_auth_method  TEXT NOT NULL,
    client_secret_hash          BYTEA,
    scope                       TEXT,
    metadata                    JSONB NOT NULL DEFAULT '{}',
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Authorization codes: single use, ten minutes, stored hashed. `family_id` is set when
-- the code is exchanged, so a replayed code can revoke what the first exchange issued.
CREATE TABLE oauth_codes (
    code_hash       BYTEA PRIMARY KEY,
    client_id       TEXT NOT NULL,
    identity_name   TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL,
    scopes          TEXT NOT NULL,
    resource        TEXT,
    code_challenge  TEXT NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    used_at         TIMESTAMPTZ,
    family_id       UUID
);

-- Refresh tokens, rotated on every use. A token presented after it was rotated is reuse:
-- its whole family is revoked.
CREATE TABLE oauth_refresh_tokens (
    token_hash     BYTEA PRIMARY KEY,
    family_id      UUID NOT NULL,
    client_id      TEXT NOT NULL,
    identity_name  TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    resource       TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at     TIMESTAMPTZ NOT NULL,
    used_at        TIMESTAMPTZ,
    revoked_at     TIMESTAMPTZ
);
CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family_id);

-- The deny-list: access-token ids (`jti`) and refresh families (`family:<uuid>`) revoked
-- before they expire. Rows past `expires_at` can be deleted.
CREATE TABLE revoked_tokens (
    token_id    TEXT PRIMARY KEY,
    revoked_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    reason      TEXT NOT NULL
);
