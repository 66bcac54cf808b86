-- The card vault's schema on SQLite. Rows hold ciphertext, nonce, key version, fingerprint and
-- non-sensitive metadata; never a PAN. Times are UTC microseconds since the Unix epoch.

-- Keys, always wrapped by a KEK. One row per (merchant, purpose, version): the constraint, not
-- an application lock, settles two replicas creating a merchant's first key at once.
CREATE TABLE data_keys (
    merchant_id TEXT NOT NULL,
    purpose     TEXT NOT NULL CHECK (purpose IN ('dek', 'fingerprint')),
    version     INTEGER NOT NULL CHECK (version >= 1),
    kek_id      TEXT NOT NULL,
    wrapped     BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, purpose, version)
) STRICT;

-- One row per token. A token is unique in the vault; a merchant has at most one token per card
-- (fingerprint) and format.
CREATE TABLE tokens (
    token        TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    fingerprint  BLOB NOT NULL,
    token_format TEXT NOT NULL CHECK (token_format IN ('random', 'pan_shaped')),
    dek_version  INTEGER NOT NULL,
    nonce        BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    brand        TEXT NOT NULL,
    bin          TEXT NOT NULL,
    last4        TEXT NOT NULL,
    pan_length   INTEGER NOT NULL,
    exp_month    INTEGER,
    exp_year     INTEGER,
    created_at   INTEGER NOT NULL,
    UNIQUE (merchant_id, fingerprint, token_format)
) STRICT;

-- One row per call, allowed or denied (PCI DSS 10.2). Append-only: the triggers refuse UPDATE
-- and DELETE through SQL.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    caller      TEXT NOT NULL,
    peer        TEXT,
    operation   TEXT NOT NULL,
    merchant_id TEXT,
    token       TEXT,
    outcome     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    reason      TEXT,
    detail      TEXT
) STRICT;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
