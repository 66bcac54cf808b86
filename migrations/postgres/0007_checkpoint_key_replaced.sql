-- A checkpoint may be `key_replaced`: the first checkpoint of a replacement audit signing key
-- (`vaultd replace-audit-key`), the only place the checkpoint chain may change keys.
ALTER TABLE audit_checkpoints DROP CONSTRAINT audit_checkpoints_kind_check;
ALTER TABLE audit_checkpoints ADD CONSTRAINT audit_checkpoints_kind_check
    CHECK (kind IN ('start', 'interval', 'stop', 'export', 'prune', 'key_replaced'));
