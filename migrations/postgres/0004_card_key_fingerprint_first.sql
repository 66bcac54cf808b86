-- The one-token-per-(merchant, card, format) constraint, keyed fingerprint first.
--
-- TokenizeBatch looks up many fingerprints of one merchant at once (`merchant_id = $1 AND
-- token_format = $2 AND fingerprint IN (...)`). Keyed merchant first, PostgreSQL, with no
-- statistics yet on a table that had just grown, used the index for the merchant and format
-- only and filtered the fingerprints: it read every token of the merchant (50 ms a batch at
-- 38 k tokens, and growing with the table). Keyed fingerprint first (an HMAC, unique to the
-- merchant's card), the index answers the lookup with one probe per fingerprint; measured, the
-- planner took it on the same growing table (1.6 ms a batch). Statistics still matter: with
-- none at all (a table filled by one statement, never vacuumed) the planner can prefer
-- tokens_merchant_version and filter; autovacuum's ANALYZE ends that.
-- SQLite probes per IN value with either order and keeps its original constraint.
ALTER TABLE tokens DROP CONSTRAINT tokens_merchant_id_fingerprint_token_format_key;
ALTER TABLE tokens ADD CONSTRAINT tokens_card_key UNIQUE (fingerprint, merchant_id, token_format);
