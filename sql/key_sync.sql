-- Shared parts of the instrument_token -> instrument_key sync (revision
-- key_columns): the per-statement configuration, dead letters and the
-- token-usage log. The per-table trigger functions come from
-- sql/templates/key_sync_trigger.sql.j2.

-- Token-only writes seen in key_primary/key_only: one row per write, so writers
-- never queue on a hot counter row. keyshift status sums it.
CREATE TABLE keyshift.token_usage (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    phase        text NOT NULL,
    operation    text NOT NULL,
    instrument_token bigint,
    at           timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    actor        text NOT NULL DEFAULT session_user
);
CREATE INDEX token_usage_table_idx ON keyshift.token_usage (table_schema, table_name, at);
COMMENT ON TABLE keyshift.token_usage IS 'Writes that carried only a token after their table left dual: the token-usage audit at run time';
COMMENT ON COLUMN keyshift.token_usage.id IS 'Order of the writes';
COMMENT ON COLUMN keyshift.token_usage.table_schema IS 'Schema of the table written';
COMMENT ON COLUMN keyshift.token_usage.table_name IS 'Table written';
COMMENT ON COLUMN keyshift.token_usage.phase IS 'Phase the table was in';
COMMENT ON COLUMN keyshift.token_usage.operation IS 'INSERT or UPDATE';
COMMENT ON COLUMN keyshift.token_usage.instrument_token IS 'The token written';
COMMENT ON COLUMN keyshift.token_usage.at IS 'When';
COMMENT ON COLUMN keyshift.token_usage.actor IS 'Role that wrote it';

-- Open dead letters are looked up by identity so a row is dead-lettered once.
CREATE INDEX dead_letters_identity_idx ON keyshift.dead_letters (source, row_identity)
    WHERE resolved_at IS NULL;

-- One line of configuration a sync trigger needs, read once per statement:
-- "<phase>:<validation_mode>:<key_only_token_writes>:<broker>".
CREATE FUNCTION keyshift.key_sync_config(p_schema text, p_table text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    m record;
BEGIN
    SELECT t.phase, t.validation_mode, t.key_only_token_writes INTO m
      FROM keyshift.migrated_tables t
     WHERE t.table_schema = p_schema AND t.table_name = p_table;
    IF NOT FOUND THEN
        -- A table whose registration was removed keeps its trigger harmless.
        RETURN 'token_only:strict:refuse:';
    END IF;
    RETURN m.phase || ':' || m.validation_mode || ':' || m.key_only_token_writes || ':'
           || COALESCE(keyshift.setting('registry.legacy_broker'), '');
END
$fn$;
COMMENT ON FUNCTION keyshift.key_sync_config(text, text) IS 'Phase, mode and broker of a table under migration, as one line for its sync trigger';

-- BEFORE ... FOR EACH STATEMENT: load the table's configuration into a
-- transaction-local setting, stamped with a new generation, so that the row
-- trigger reads it from memory instead of querying per row, and its one-entry
-- token cache is valid for this statement only.
CREATE FUNCTION keyshift.key_sync_statement() RETURNS trigger
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    generation bigint;
BEGIN
    generation := COALESCE(NULLIF(pg_catalog.current_setting('keyshift.generation', true), ''), '0')::bigint + 1;
    PERFORM pg_catalog.set_config('keyshift.generation', generation::text, true);
    PERFORM pg_catalog.set_config('keyshift.cfg_' || TG_ARGV[0],
        keyshift.key_sync_config(TG_TABLE_SCHEMA, TG_TABLE_NAME) || ':' || generation, true);
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION keyshift.key_sync_statement() IS 'Statement trigger of the key sync: loads the table''s phase and mode once per statement';

CREATE FUNCTION keyshift.key_sync_dead_letter(p_schema text, p_table text, p_operation text,
                                              p_identity jsonb, p_payload jsonb, p_reason text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    v_source text := p_schema || '.' || p_table;
BEGIN
    -- One open dead letter per row: a row rewritten while still unmapped
    -- refreshes its letter instead of adding another.
    UPDATE keyshift.dead_letters d
       SET payload = p_payload, reason = p_reason, operation = p_operation
     WHERE d.source = v_source AND d.row_identity = p_identity AND d.resolved_at IS NULL;
    IF NOT FOUND THEN
        INSERT INTO keyshift.dead_letters (source, operation, row_identity, payload, reason)
        VALUES (v_source, p_operation, p_identity, p_payload, p_reason);
    END IF;
END
$fn$;
COMMENT ON FUNCTION keyshift.key_sync_dead_letter(text, text, text, jsonb, jsonb, text) IS 'Record a write the key sync could not map (lenient mode)';

CREATE FUNCTION keyshift.key_sync_token_usage(p_schema text, p_table text, p_phase text,
                                              p_operation text, p_token bigint)
RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
    INSERT INTO keyshift.token_usage (table_schema, table_name, phase, operation, instrument_token)
    VALUES (p_schema, p_table, p_phase, p_operation, p_token);
$fn$;
COMMENT ON FUNCTION keyshift.key_sync_token_usage(text, text, text, text, bigint) IS 'Count a token-only write to a table past dual';

-- Backfill settings (keyshift backfill reads them; --batch-size overrides).
SELECT keyshift.define_setting('backfill.batch_rows', 'int', '20000',
    'Rows a backfill batch starts with; the size then adapts toward backfill.target_batch_ms');
SELECT keyshift.define_setting('backfill.target_batch_ms', 'int', '200',
    'Duration a backfill batch aims for, in milliseconds');
SELECT keyshift.define_setting('backfill.pause_ms', 'int', '0',
    'Pause between backfill batches, in milliseconds');
SELECT keyshift.define_setting('backfill.lock_timeout', 'interval', '1 second',
    'lock_timeout of each backfill batch; a batch that hits it is retried with backoff');
SELECT keyshift.define_setting('backfill.statement_timeout', 'interval', '30 seconds',
    'statement_timeout of each backfill batch; a batch that hits it is split and retried');
SELECT keyshift.define_setting('backfill.max_retries', 'int', '8',
    'Retries of one batch (lock timeout, split) before the backfill stops');
SELECT keyshift.define_setting('backfill.max_replication_lag_bytes', 'int', '67108864',
    'The backfill waits before a batch while a standby replays more than this many bytes behind');
