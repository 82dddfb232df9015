-- Foundation: instance bookkeeping.
--
-- `warden_instance` holds one row. `master_key_check` is an AEAD encryption of a fixed
-- text under the master key, so a start with the wrong key fails with a clear error
-- instead of failing later on every secret it cannot decrypt.
CREATE TABLE warden_instance (
    id                BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    master_key_check  BYTEA
);
INSERT INTO warden_instance (id) VALUES (TRUE);
