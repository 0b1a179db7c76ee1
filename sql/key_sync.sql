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

-- One line of configuration a sync trigger needs:
-- "<phase>:<validation_mode>:<key_only_token_writes>:<broker>".
CREATE FUNCTION keyshift.key_sync_config(p_schema text, p_table text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    v text;
BEGIN
    SELECT t.phase || ':' || t.validation_mode || ':' || t.key_only_token_writes || ':'
           || COALESCE((SELECT s.value FROM keyshift.settings s WHERE s.key = 'registry.legacy_broker'), '')
      INTO v
      FROM keyshift.migrated_tables t
     WHERE t.table_schema = p_schema AND t.table_name = p_table;
    -- A table whose registration was removed keeps its trigger harmless.
    RETURN COALESCE(v, 'token_only:strict:refuse:');
END
$fn$;
COMMENT ON FUNCTION keyshift.key_sync_config(text, text) IS 'Phase, mode and broker of a table under migration, as one line for its sync trigger';

-- The sync trigger must not query its configuration on every write: a
-- single-row INSERT would pay for a query (and a statement trigger to run
-- it) on top of its own work. Instead the configuration is published as the
-- body of a constant SQL function, keyshift.key_cfg__<schema>__<table>(),
-- which the planner inlines into the trigger's first expression: reading it
-- costs nothing, and replacing the function (a catalog change) invalidates
-- the cached expression in every session at its next statement. Triggers on
-- keyshift.migrated_tables and keyshift.settings republish it in the same
-- transaction as every change, so the two cannot disagree after a commit
-- (pre-flight check sync_triggers compares them).
CREATE FUNCTION keyshift.publish_constant(p_name text, p_value text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
BEGIN
    -- Two transactions replacing one function would fail ("tuple concurrently updated").
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('keyshift.publish_constant'));
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE FUNCTION keyshift.%I() RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS %L',
        p_name, 'SELECT ' || pg_catalog.quote_literal(p_value) || '::text');
END
$fn$;
COMMENT ON FUNCTION keyshift.publish_constant(text, text) IS 'Create or replace keyshift.<name>() as a constant SQL function the planner inlines';
REVOKE EXECUTE ON FUNCTION keyshift.publish_constant(text, text) FROM PUBLIC;

CREATE FUNCTION keyshift.key_sync_publish(p_schema text, p_table text) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
    SELECT keyshift.publish_constant('key_cfg__' || p_schema || '__' || p_table,
                                     keyshift.key_sync_config(p_schema, p_table));
$fn$;
COMMENT ON FUNCTION keyshift.key_sync_publish(text, text) IS 'Republish a table''s sync-trigger configuration as its constant function key_cfg__<schema>__<table>()';
-- Only through the triggers below, as whoever may change the tables they watch.
REVOKE EXECUTE ON FUNCTION keyshift.key_sync_publish(text, text) FROM PUBLIC;

-- A table's phase or options changed (keyshift.migrated_tables): republish
-- that table; the legacy broker changed (keyshift.settings): every table.
CREATE FUNCTION keyshift.key_sync_republish() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
BEGIN
    IF TG_TABLE_NAME = 'settings' THEN
        PERFORM keyshift.key_sync_publish(t.table_schema, t.table_name) FROM keyshift.migrated_tables t;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM keyshift.key_sync_publish(OLD.table_schema, OLD.table_name);
    ELSE
        PERFORM keyshift.key_sync_publish(NEW.table_schema, NEW.table_name);
    END IF;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION keyshift.key_sync_republish() IS 'Trigger: a sync configuration changed, republish it';
REVOKE EXECUTE ON FUNCTION keyshift.key_sync_republish() FROM PUBLIC;

CREATE TRIGGER key_sync_publish
    AFTER INSERT OR DELETE ON keyshift.migrated_tables
    FOR EACH ROW EXECUTE FUNCTION keyshift.key_sync_republish();
CREATE TRIGGER key_sync_publish_update
    AFTER UPDATE ON keyshift.migrated_tables
    FOR EACH ROW
    WHEN ((OLD.phase, OLD.validation_mode, OLD.key_only_token_writes)
          IS DISTINCT FROM (NEW.phase, NEW.validation_mode, NEW.key_only_token_writes))
    EXECUTE FUNCTION keyshift.key_sync_republish();
CREATE TRIGGER key_sync_publish_broker
    AFTER INSERT OR UPDATE ON keyshift.settings
    FOR EACH ROW WHEN (NEW.key = 'registry.legacy_broker')
    EXECUTE FUNCTION keyshift.key_sync_republish();
CREATE TRIGGER key_sync_publish_broker_delete
    AFTER DELETE ON keyshift.settings
    FOR EACH ROW WHEN (OLD.key = 'registry.legacy_broker')
    EXECUTE FUNCTION keyshift.key_sync_republish();

-- The registry's version, for the sync triggers' token cache: a cached
-- mapping is used only under the version it was read at. Every statement
-- that changes the token mappings rewrites this constant (the planner
-- inlines it, so reading it costs nothing and a change reaches every
-- session's next statement), whatever wrote them: keyshift registry import,
-- a revision, or a DBA's own SQL.
CREATE FUNCTION keyshift.key_registry_version() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$SELECT '0'::text$fn$;

CREATE FUNCTION keyshift.key_registry_publish() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM keyshift.publish_constant('key_registry_version', pg_catalog.pg_current_xact_id()::text);
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION keyshift.key_registry_publish() IS 'Trigger: the token mappings changed, rewrite keyshift.key_registry_version()';
REVOKE EXECUTE ON FUNCTION keyshift.key_registry_publish() FROM PUBLIC;

CREATE TRIGGER keyshift_registry_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON instrument_registry.broker_instrument_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION keyshift.key_registry_publish();

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

-- Retry of a token table's dead letter (keyshift dlq retry): give the row the
-- key its token resolves to now, through the sync trigger (which re-checks
-- the pair). Raises while the token still has no mapping or the row's key
-- disagrees with it (that needs a person, not a retry).
CREATE FUNCTION keyshift.key_sync_retry(p_source text, p_identity jsonb, p_payload jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    m record;
    rel text;
    matches text;
    found_row record;
    v_broker text := keyshift.setting('registry.legacy_broker');
BEGIN
    SELECT * INTO m FROM keyshift.migrated_tables t WHERE t.table_schema || '.' || t.table_name = p_source;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is no longer under migration', p_source;
    END IF;
    rel := pg_catalog.format('%I.%I', m.table_schema, m.table_name);
    SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = r.%1$I', c), ' AND ') INTO matches
      FROM pg_catalog.unnest(m.identity_columns) AS c;
    EXECUTE pg_catalog.format(
        'SELECT t.%1$I AS token, t.%2$I AS key, instrument_registry.resolve_key($1, t.%1$I, %3$s) AS resolved
           FROM %4$s t, pg_catalog.jsonb_populate_record(NULL::%4$s, $2) r WHERE %5$s',
        m.token_column, m.key_column,
        CASE WHEN m.time_column IS NULL THEN 'pg_catalog.now()' ELSE pg_catalog.format('t.%I', m.time_column) END,
        rel, matches)
    INTO found_row USING v_broker, p_identity;
    IF found_row IS NULL THEN
        RETURN;  -- the row is gone: nothing left to apply
    ELSIF found_row.key IS NOT NULL AND found_row.key IS NOT DISTINCT FROM found_row.resolved THEN
        RETURN;  -- already repaired
    ELSIF found_row.resolved IS NULL THEN
        RAISE EXCEPTION 'still no instrument_key for instrument_token % of broker %', found_row.token, v_broker;
    ELSIF found_row.key IS NOT NULL THEN
        RAISE EXCEPTION 'inconsistent pair: token % means %, the row says %: repair the row by hand',
                        found_row.token, found_row.resolved, found_row.key;
    END IF;
    EXECUTE pg_catalog.format(
        'UPDATE %1$s t SET %2$I = $1 FROM pg_catalog.jsonb_populate_record(NULL::%1$s, $2) r WHERE %3$s',
        rel, m.key_column, matches)
    USING found_row.resolved, p_identity;
END
$fn$;
COMMENT ON FUNCTION keyshift.key_sync_retry(text, jsonb, jsonb) IS 'dlq retry of a token table row: give it the key its token now resolves to';

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
