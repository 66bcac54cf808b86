-- The forward proxy (vault_core::forward): destinations under dual control, and the forwards
-- whose outcome is not recorded yet. Times are UTC microseconds since the Unix epoch.

-- One row per version of a destination: its spec as canonical JSON and that JSON's
-- fingerprint. One admin proposes, a different admin approves (dual control); a revocation
-- marks every version of the name. A change is a new version, never an edit of the spec.
CREATE TABLE destinations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    proposed_at INTEGER NOT NULL,
    approved_by TEXT,
    approved_at INTEGER,
    revoked_by  TEXT,
    revoked_at  INTEGER,
    -- The audit signing key's Ed25519 signature of the approval (id, name, fingerprint,
    -- proposer, approver, approved_at): a row written or altered outside the vault is refused.
    approval_seal BLOB,
    CHECK (approved_by <> proposed_by),
    CHECK ((approved_by IS NULL) = (approved_at IS NULL)),
    CHECK ((approved_by IS NULL) = (approval_seal IS NULL)),
    CHECK ((revoked_by IS NULL) = (revoked_at IS NULL))
) STRICT;

-- A forward looks up the version of its destination in force, by name.
CREATE INDEX destinations_name ON destinations (name);

-- A forward whose first audit record is durable and whose second is not: written in the
-- first record's transaction, deleted in the second's. A row left past its deadline is a
-- forward whose outcome was lost; a replica records it as unknown.
CREATE TABLE forwards_in_flight (
    request_id  TEXT PRIMARY KEY,
    caller      TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    token       TEXT NOT NULL,
    destination TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    begun_at    INTEGER NOT NULL,
    deadline_at INTEGER NOT NULL
) STRICT;

-- Replicas look for forwards past their deadline.
CREATE INDEX forwards_in_flight_deadline ON forwards_in_flight (deadline_at);
