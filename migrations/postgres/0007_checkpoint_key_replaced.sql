-- A checkpoint may be `key_replaced`: the first checkpoint of a replacement audit signing key
-- (`vaultd replace-audit-key`), the only place the checkpoint chain may change keys; it names
-- the key it replaces in `replaces_key` (NULL on every other checkpoint).
ALTER TABLE audit_checkpoints DROP CONSTRAINT audit_checkpoints_kind_check;
ALTER TABLE audit_checkpoints ADD CONSTRAINT audit_checkpoints_kind_check
    CHECK (kind IN ('start', 'interval', 'stop', 'export', 'prune', 'key_replaced'));
ALTER TABLE audit_checkpoints ADD COLUMN replaces_key TEXT;
ALTER TABLE audit_checkpoints ADD CONSTRAINT audit_checkpoints_replaces_key_check
    CHECK ((kind = 'key_replaced') = (replaces_key IS NOT NULL));
