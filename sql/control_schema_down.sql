-- Downgrade of control_schema. The schema itself stays: alembic's version
-- table lives in it (alembic/env.py creates it before any revision runs).
DROP TABLE IF EXISTS keyshift.flow_state;
DROP FUNCTION IF EXISTS keyshift.resolve_dead_letter(bigint, text);
DROP FUNCTION IF EXISTS keyshift.retry_dead_letter(bigint);
DROP TABLE IF EXISTS keyshift.dead_letter_sources;
DROP FUNCTION IF EXISTS keyshift.register_pair(text, text, jsonb, text, text);
DROP TABLE IF EXISTS keyshift.reconcile_runs;
DROP TABLE IF EXISTS keyshift.reconcile_pairs;
DROP FUNCTION IF EXISTS keyshift.dead_letter(text, text, jsonb, jsonb, text);
DROP TABLE IF EXISTS keyshift.dead_letters;
DROP TABLE IF EXISTS keyshift.backfill_batches;
DROP TABLE IF EXISTS keyshift.backfill_state;
DROP TABLE IF EXISTS keyshift.migrated_tables;
DROP FUNCTION IF EXISTS keyshift.set_setting(text, text, text);
DROP FUNCTION IF EXISTS keyshift.setting(text);
DROP FUNCTION IF EXISTS keyshift.define_setting(text, text, text, text, text[]);
DROP FUNCTION IF EXISTS keyshift.setting_canonical(text, text, text[], text);
DROP TABLE IF EXISTS keyshift.settings;
DROP FUNCTION IF EXISTS keyshift.audit(text, text, text, text, text, jsonb);
DROP TABLE IF EXISTS keyshift.audit_log;
DROP FUNCTION IF EXISTS keyshift.audit_log_append_only();
COMMENT ON SCHEMA keyshift IS NULL;
