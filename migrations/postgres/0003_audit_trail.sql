-- The tamper-evident audit trail (PCI DSS 10.2, 10.3, 10.5): the same tables and rules as
-- migrations/sqlite/0003_audit_trail.sql.

-- data_keys may also hold the vault's audit signing key (owner '~vault').
ALTER TABLE data_keys DROP CONSTRAINT data_keys_purpose_check;
ALTER TABLE data_keys ADD CONSTRAINT data_keys_purpose_check
    CHECK (purpose IN ('dek', 'fingerprint', 'audit_signing'));

-- Records written before the chain existed stay, unchained and still append-only.
ALTER TABLE audit_log RENAME TO audit_log_unchained;
ALTER INDEX audit_log_at RENAME TO audit_log_unchained_at;

-- One row per audited event; a chain per writer (a vaultd process), so replicas never contend
-- on one sequence.
CREATE TABLE audit_log (
    writer      TEXT NOT NULL,
    seq         BIGINT NOT NULL CHECK (seq >= 1),
    at          BIGINT NOT NULL,
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
    prev_hash   BYTEA NOT NULL CHECK (length(prev_hash) = 32),
    hash        BYTEA NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (writer, seq)
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_request ON audit_log (request_id);

-- Every writer that ever wrote a record, so that finding each writer's head is one index
-- lookup per writer rather than a scan of the log.
CREATE TABLE audit_writers (
    writer     TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL
);

-- Signed chain heads, in one chain of their own across writers (cp_seq from 1, without gaps).
CREATE TABLE audit_checkpoints (
    cp_seq    BIGINT PRIMARY KEY CHECK (cp_seq >= 1),
    kind      TEXT NOT NULL CHECK (kind IN ('start', 'interval', 'stop', 'export', 'prune')),
    at        BIGINT NOT NULL,
    writer    TEXT NOT NULL,
    seq       BIGINT NOT NULL CHECK (seq >= 0),
    head_hash BYTEA NOT NULL CHECK (length(head_hash) = 32),
    prev_hash BYTEA NOT NULL CHECK (length(prev_hash) = 32),
    key_id    TEXT NOT NULL,
    signature BYTEA NOT NULL CHECK (length(signature) = 64),
    hash      BYTEA NOT NULL CHECK (length(hash) = 32)
);

CREATE INDEX audit_checkpoints_writer ON audit_checkpoints (writer, seq);
CREATE INDEX audit_checkpoints_at ON audit_checkpoints (at);

-- Rows leave the trail only by pruning: the prune's transaction holds the one row of this table
-- while it deletes and removes it before it commits, so no other transaction ever sees it.
CREATE TABLE audit_prune_permit (
    id INTEGER PRIMARY KEY CHECK (id = 1)
);

CREATE FUNCTION audit_trail_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM audit_prune_permit) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_guard BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_trail_guard();

CREATE TRIGGER audit_checkpoints_guard BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_trail_guard();

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_trail_guard();

CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_trail_guard();
