-- A checkpoint may be `key_replaced`: the first checkpoint of a replacement audit signing key
-- (`vaultd replace-audit-key`), the only place the checkpoint chain may change keys; it names
-- the key it replaces in `replaces_key` (NULL on every other checkpoint). SQLite
-- cannot alter a CHECK, so the table is rebuilt with its rows, then its indexes and its
-- append-only triggers. (DROP TABLE fires no DELETE trigger; the old triggers go with it.)
CREATE TABLE audit_checkpoints_new (
    cp_seq    INTEGER PRIMARY KEY CHECK (cp_seq >= 1),
    kind      TEXT NOT NULL
              CHECK (kind IN ('start', 'interval', 'stop', 'export', 'prune', 'key_replaced')),
    at        INTEGER NOT NULL,
    writer    TEXT NOT NULL,
    seq       INTEGER NOT NULL CHECK (seq >= 0),
    head_hash BLOB NOT NULL CHECK (length(head_hash) = 32),
    prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL CHECK (length(signature) = 64),
    hash      BLOB NOT NULL CHECK (length(hash) = 32),
    replaces_key TEXT CHECK ((kind = 'key_replaced') = (replaces_key IS NOT NULL))
) STRICT;

INSERT INTO audit_checkpoints_new
    (cp_seq, kind, at, writer, seq, head_hash, prev_hash, key_id, signature, hash)
SELECT cp_seq, kind, at, writer, seq, head_hash, prev_hash, key_id, signature, hash
FROM audit_checkpoints;

DROP TABLE audit_checkpoints;
ALTER TABLE audit_checkpoints_new RENAME TO audit_checkpoints;

CREATE INDEX audit_checkpoints_writer ON audit_checkpoints (writer, seq);
CREATE INDEX audit_checkpoints_at ON audit_checkpoints (at);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
WHEN NOT EXISTS (SELECT 1 FROM audit_prune_permit)
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
