-- The tamper-evident audit trail (PCI DSS 10.2, 10.3, 10.5). Times are UTC microseconds since
-- the Unix epoch; hashes are SHA-256 (32 bytes); the formats are vault-audit's.

-- data_keys may also hold the vault's audit signing key (an Ed25519 seed, wrapped by the KEK
-- like any other key, owned by '~vault', a name no merchant id can take). SQLite cannot alter a
-- CHECK, so the table is rebuilt.
CREATE TABLE data_keys_0003 (
    merchant_id TEXT NOT NULL,
    purpose     TEXT NOT NULL CHECK (purpose IN ('dek', 'fingerprint', 'audit_signing')),
    version     INTEGER NOT NULL CHECK (version >= 1),
    kek_id      TEXT NOT NULL,
    wrapped     BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    uses        INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
    PRIMARY KEY (merchant_id, purpose, version)
) STRICT;
INSERT INTO data_keys_0003 (merchant_id, purpose, version, kek_id, wrapped, created_at, uses)
    SELECT merchant_id, purpose, version, kek_id, wrapped, created_at, uses FROM data_keys;
DROP TABLE data_keys;
ALTER TABLE data_keys_0003 RENAME TO data_keys;

-- Records written before the chain existed stay, unchained and still append-only.
ALTER TABLE audit_log RENAME TO audit_log_unchained;

-- One row per audited event. Each writer (a vaultd process) keeps its own chain: seq from 1
-- without gaps, prev_hash the hash of the writer's previous record, hash over every field.
CREATE TABLE audit_log (
    writer      TEXT NOT NULL,
    seq         INTEGER NOT NULL CHECK (seq >= 1),
    at          INTEGER NOT NULL,
    caller      TEXT NOT NULL,
    origin      TEXT NOT NULL,
    operation   TEXT NOT NULL,
    detail      TEXT,
    outcome     TEXT NOT NULL,
    resource    TEXT NOT NULL,
    merchant_id TEXT,
    token       TEXT,
    request_id  TEXT NOT NULL,
    reason      TEXT,
    prev_hash   BLOB NOT NULL CHECK (length(prev_hash) = 32),
    hash        BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (writer, seq)
) STRICT;

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_request ON audit_log (request_id);

-- Every writer that ever wrote a record, so that finding each writer's head is one index
-- lookup per writer rather than a scan of the log.
CREATE TABLE audit_writers (
    writer     TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL
) STRICT;

-- Signed chain heads, in one chain of their own across writers (cp_seq from 1, without gaps).
CREATE TABLE audit_checkpoints (
    cp_seq    INTEGER PRIMARY KEY CHECK (cp_seq >= 1),
    kind      TEXT NOT NULL CHECK (kind IN ('start', 'interval', 'stop', 'export', 'prune')),
    at        INTEGER NOT NULL,
    writer    TEXT NOT NULL,
    seq       INTEGER NOT NULL CHECK (seq >= 0),
    head_hash BLOB NOT NULL CHECK (length(head_hash) = 32),
    prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL CHECK (length(signature) = 64),
    hash      BLOB NOT NULL CHECK (length(hash) = 32)
) STRICT;

CREATE INDEX audit_checkpoints_writer ON audit_checkpoints (writer, seq);
CREATE INDEX audit_checkpoints_at ON audit_checkpoints (at);

-- Rows leave the trail only by pruning: the prune's transaction holds the one row of this table
-- while it deletes, and removes it before it commits, so no other transaction ever sees it.
CREATE TABLE audit_prune_permit (
    id INTEGER PRIMARY KEY CHECK (id = 1)
) STRICT;

CREATE TRIGGER audit_log_chain_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_chain_no_delete BEFORE DELETE ON audit_log
WHEN NOT EXISTS (SELECT 1 FROM audit_prune_permit)
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
WHEN NOT EXISTS (SELECT 1 FROM audit_prune_permit)
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
