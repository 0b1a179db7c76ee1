-- Downgrade of instrument_registry.
DELETE FROM keyshift.settings WHERE key = 'registry.legacy_broker';
DROP FUNCTION IF EXISTS instrument_registry.resolve_token(text, text, timestamptz);
DROP FUNCTION IF EXISTS instrument_registry.resolve_key(text, bigint, timestamptz);
DROP TABLE IF EXISTS instrument_registry.broker_instrument_tokens;
DROP TABLE IF EXISTS instrument_registry.instruments;
DROP SCHEMA IF EXISTS instrument_registry;

-- btree_gist goes too, unless something else in the database still uses it.
DO $btree_gist$
BEGIN
    DROP EXTENSION IF EXISTS btree_gist;
EXCEPTION WHEN dependent_objects_still_exist THEN
    RAISE NOTICE 'btree_gist kept: other objects use it';
END
$btree_gist$;
