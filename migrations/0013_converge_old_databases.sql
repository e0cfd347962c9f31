-- Brings databases migrated by earlier versions in line with a fresh one; a no-op on a fresh database.

-- The retired 0007_append_function.sql created this function; appends no longer use it.
DROP FUNCTION IF EXISTS flusia_append(uuid[], bigint[], text[], bytea[], jsonb, jsonb);

-- 0008_client_search.sql was edited after some databases had applied it: its first version turned GIN
-- fastupdate off (projecting many clients became several times slower), the current one keeps fastupdate on
-- with a small pending list. Both kinds of database end with the current settings.
ALTER INDEX clients_search_tsv RESET (fastupdate);
ALTER INDEX clients_phone_key_trgm RESET (fastupdate);
ALTER INDEX clients_email_key_trgm RESET (fastupdate);
ALTER INDEX client_search_words_trgm RESET (fastupdate);
ALTER INDEX clients_search_tsv SET (gin_pending_list_limit = 256);
ALTER INDEX clients_phone_key_trgm SET (gin_pending_list_limit = 256);
ALTER INDEX clients_email_key_trgm SET (gin_pending_list_limit = 256);
ALTER INDEX client_search_words_trgm SET (gin_pending_list_limit = 256);
