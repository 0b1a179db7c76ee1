-- Downgrade of the shared parts of key_columns (after every table has left).
DELETE FROM keyshift.settings WHERE key LIKE 'backfill.%';
DROP FUNCTION IF EXISTS keyshift.set_table_option(text, text, text, text, text);
DROP FUNCTION IF EXISTS keyshift.set_phase(text, text, text, text);
DROP FUNCTION IF EXISTS keyshift.key_primary_shape(text, text);
DROP FUNCTION IF EXISTS keyshift.phase_rank(text);
DROP FUNCTION IF EXISTS keyshift.assert_key_ready(text, text);
DROP FUNCTION IF EXISTS keyshift.key_readiness(text, text);
DROP FUNCTION IF EXISTS keyshift.key_sync_retry(text, jsonb, jsonb);
DROP FUNCTION IF EXISTS keyshift.key_sync_token_usage(text, text, text, text, bigint);
DROP FUNCTION IF EXISTS keyshift.key_sync_statement();
DROP FUNCTION IF EXISTS keyshift.key_sync_config(text, text);
DROP TABLE IF EXISTS keyshift.token_usage;
