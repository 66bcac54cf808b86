-- The card vault's schema on PostgreSQL: the same tables and constraints as
-- migrations/sqlite/0001_vault.sql. Rows hold ciphertext, nonce, key version, fingerprint and
-- non-sensitive metadata; never a PAN. Times are UTC microseconds since the Unix epoch.

-- Keys, always wrapped by a KEK. One row per (merchant, purpose, version): the constraint, not
-- an application lock, settles replicas creating a merchant's first key at once.
CREATE TABLE data_keys (
    merchant_id TEXT NOT NULL,
    purpose     TEXT NOT NULL CHECK (purpose IN ('dek', 'fingerprint')),
    version     BIGINT NOT NULL CHECK (version >= 1),
    kek_id      TEXT NOT NULL,
    wrapped     BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (merchant_id, purpose, version)
);

-- One row per token. A token is unique in the vault; a merchant has at most one token per card
-- (fingerprint) and format.
CREATE TABLE tokens (
    token        TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    fingerprint  BYTEA NOT NULL,
    token_format TEXT NOT NULL CHECK (token_format IN ('random', 'pan_shaped')),
    dek_version  BIGINT NOT NULL,
    nonce        BYTEA NOT NULL,
    ciphertext   BYTEA NOT NULL,
    brand        TEXT NOT NULL,
    bin          TEXT NOT NULL,
    last4        TEXT NOT NULL,
    pan_length   BIGINT NOT NULL,
    exp_month    BIGINT,
    exp_year     BIGINT,
    created_at   BIGINT NOT NULL,
    UNIQUE (merchant_id, fingerprint, token_format)
);

-- One row per call, allowed or denied (PCI DSS 10.2). Keyed by the call's request id (a random
-- UUID): replicas never contend on one row or sequence. Append-only: the trigger refuses
-- UPDATE and DELETE through SQL.
CREATE TABLE audit_log (
    request_id  TEXT PRIMARY KEY,
    at          BIGINT NOT NULL,
    caller      TEXT NOT NULL,
    peer        TEXT,
    operation   TEXT NOT NULL,
    merchant_id TEXT,
    token       TEXT,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    detail      TEXT
);

CREATE INDEX audit_log_at ON audit_log (at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
