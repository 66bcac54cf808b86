-- Vault-wide tallies for abuse resistance (docs/security.md): how many distinct items a caller
-- brought into one bucket in one fixed time window. Two kinds today:
--   tokenize.card_bucket  distinct card fingerprints per (merchant, card length, shown leading
--                         digits, last four, caller): the dedup oracle's signature
--   merchant.create       distinct new merchant ids per caller: each costs two KEK wraps
-- They live in the store, not in a replica's memory, so they survive restarts and are shared
-- by replicas; deleting tokens does not reset them. Rows of windows that have ended are purged.
--
-- Both tables are keyed window first (a purge pages through ended windows by key), and no
-- secondary index: a tokenize is on the hot path. A tally's first item is kept in its row,
-- so the common case, a bucket's only card of the day, writes one row.

-- One row per (window, scope, subject): `items` counts distinct items, and stops growing
-- (items are no longer stored) once it passes the limit the vault asked with; `first_item`
-- is the first of them.
CREATE TABLE abuse_tallies (
    window_end BIGINT NOT NULL,   -- seconds since the Unix epoch, UTC: the window's end
    scope      TEXT NOT NULL,
    subject    TEXT NOT NULL,
    items      BIGINT NOT NULL CHECK (items >= 0),
    first_item BYTEA NOT NULL,
    PRIMARY KEY (window_end, scope, subject)
);

-- The other distinct items of each tally (a card's keyed fingerprint, a merchant id): an item
-- seen again in the same window is not counted twice.
CREATE TABLE abuse_tally_items (
    window_end BIGINT NOT NULL,
    scope      TEXT NOT NULL,
    subject    TEXT NOT NULL,
    item       BYTEA NOT NULL,
    PRIMARY KEY (window_end, scope, subject, item)
);
