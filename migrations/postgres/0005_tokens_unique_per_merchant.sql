-- Tokens are unique per merchant: the primary key becomes (merchant_id, token).
--
-- With the token alone as the key, every merchant drew PAN-shaped tokens from one shared space.
-- A short PAN has few: a 12-digit card's tokens under the old shape (first 6 and last 4 kept)
-- had only about 90 values per BIN and last 4, so anyone allowed to tokenize, under throwaway
-- merchant ids, could take them all and leave an unrelated merchant's card with no token
-- (RESOURCE_EXHAUSTED). Keyed per merchant, one merchant can only exhaust its own space. Every
-- lookup, update and delete by token also names the merchant, and a PAN's ciphertext is bound
-- to merchant + token, so two merchants holding the same token string never meet. RANDOM tokens
-- (131 random bits) are unaffected. tokens_card_key (0004) and tokens_merchant_version (0002)
-- stay as they are.
--
-- The release before this one runs on the new key: it asks whether a token is taken across
-- merchants, so at worst it draws another token. Adding the key builds its index while holding
-- the table's lock (reads and writes of tokens wait), for a time that grows with the table.
-- Once two merchants hold the same token string, the old key cannot be restored.
ALTER TABLE tokens
    DROP CONSTRAINT tokens_pkey,
    ADD CONSTRAINT tokens_pkey PRIMARY KEY (merchant_id, token);
