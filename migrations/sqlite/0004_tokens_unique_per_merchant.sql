-- Tokens are unique per merchant: the key becomes (merchant_id, token).
--
-- With the token alone as the key, every merchant drew PAN-shaped tokens from one shared space.
-- A short PAN has few: a 12-digit card's tokens under the old shape (first 6 and last 4 kept)
-- had only about 90 values per BIN and last 4, so anyone allowed to tokenize, under throwaway
-- merchant ids, could take them all and leave an unrelated merchant's card with no token
-- (RESOURCE_EXHAUSTED). Keyed per merchant, one merchant can only exhaust its own space. Every
-- lookup, update and delete by token also names the merchant, and a PAN's ciphertext is bound
-- to merchant + token, so two merchants holding the same token string never meet. RANDOM tokens
-- (131 random bits) are unaffected.
--
-- SQLite cannot alter a primary key: the table is rebuilt (new table, copy, drop, rename), with
-- the constraint and the index earlier migrations made (0001's UNIQUE (merchant_id,
-- fingerprint, token_format), 0002's tokens_merchant_version). Once two merchants hold the same
-- token string, this cannot be undone by restoring the old key.
CREATE TABLE tokens_0004 (
    token        TEXT NOT NULL,
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
    PRIMARY KEY (merchant_id, token),
    UNIQUE (merchant_id, fingerprint, token_format)
) STRICT;
INSERT INTO tokens_0004 (token, merchant_id, fingerprint, token_format, dek_version, nonce,
                         ciphertext, brand, bin, last4, pan_length, exp_month, exp_year,
                         created_at)
    SELECT token, merchant_id, fingerprint, token_format, dek_version, nonce, ciphertext, brand,
           bin, last4, pan_length, exp_month, exp_year, created_at
    FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_0004 RENAME TO tokens;

-- Re-encryption walks a merchant's tokens by DEK version (as in 0002).
CREATE INDEX tokens_merchant_version ON tokens (merchant_id, dek_version, token);
