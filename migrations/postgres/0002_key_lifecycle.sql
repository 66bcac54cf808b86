-- Key lifecycle: DEK use counts, and crypto-shred with dual control. The same tables and
-- constraints as migrations/sqlite/0002_key_lifecycle.sql.

-- Encryptions reserved under each DEK version. Replicas reserve uses in blocks with a
-- compare-and-set on this column, so the count is durable, never lower than the encryptions
-- made, and never above the configured cap (NIST SP 800-38D: random-nonce GCM keys).
ALTER TABLE data_keys ADD COLUMN uses BIGINT NOT NULL DEFAULT 0 CHECK (uses >= 0);

-- Shred requests: one admin asks, a different admin approves (PCI DSS 3.7.6 dual control).
CREATE TABLE shred_requests (
    request_id   TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    reason       TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'executed', 'superseded')),
    approved_by  TEXT,
    approved_at  BIGINT,
    CHECK (approved_by IS NULL OR approved_by <> requested_by)
);

-- At most one pending request per merchant.
CREATE UNIQUE INDEX shred_requests_pending ON shred_requests (merchant_id)
    WHERE state = 'pending';

-- Merchants whose keys were destroyed. Their tokens answer "keys destroyed", and they cannot
-- tokenize again (no new keys are ever created for them).
CREATE TABLE shredded_merchants (
    merchant_id TEXT PRIMARY KEY,
    shredded_at BIGINT NOT NULL,
    request_id  TEXT NOT NULL REFERENCES shred_requests (request_id)
);

-- Re-encryption walks a merchant's tokens by DEK version.
CREATE INDEX tokens_merchant_version ON tokens (merchant_id, dek_version, token);
