-- Passkeys (src/auth/passkeys.rs): WebAuthn credentials users sign in with instead of a
-- password. The private key never leaves the user's authenticator; Warden keeps the
-- public key it verifies sign-ins with, and the signature counter.
CREATE TABLE passkeys (
    credential_id    BYTEA PRIMARY KEY CHECK (length(credential_id) BETWEEN 1 AND 1023),
    identity_id      UUID NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    label            TEXT NOT NULL CHECK (length(label) BETWEEN 1 AND 64),
    public_key       BYTEA NOT NULL,          -- the COSE_Key exactly as the authenticator sent it
    algorithm        INTEGER NOT NULL,        -- COSE: -8 EdDSA, -7 ES256, -257 RS256
    sign_count       BIGINT NOT NULL,         -- 0: the authenticator keeps no counter
    aaguid           UUID NOT NULL,           -- the authenticator model (all zero when not told)
    backup_eligible  BOOLEAN NOT NULL,        -- a synced passkey
    backed_up        BOOLEAN NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at     TIMESTAMPTZ
);
CREATE INDEX passkeys_identity ON passkeys (identity_id);

-- A ceremony's challenge is sealed by Warden and carried by the page that starts it, so
-- showing a sign-in page writes nothing. Once a ceremony succeeds its challenge is
-- recorded here until it expires: each challenge is good for one sign-in or
-- registration, on any replica.
CREATE TABLE webauthn_used_challenges (
    challenge_sha256  BYTEA PRIMARY KEY,
    expires_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX webauthn_used_challenges_expiry ON webauthn_used_challenges (expires_at);
