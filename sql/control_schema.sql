-- keyshift's control schema (revision control_schema): the database is the
-- source of truth for migration state. The CLI keeps no state of its own.
-- The schema itself is created by alembic/env.py before the version table,
-- which lives here too; this file only adds to it.

CREATE SCHEMA IF NOT EXISTS keyshift;
COMMENT ON SCHEMA keyshift IS 'keyshift migration state: settings, tables under migration, backfill checkpoints, dead letters, reconciliation, audit log';

-- ---------------------------------------------------------------- audit log
CREATE TABLE keyshift.audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    actor      text NOT NULL DEFAULT session_user,
    client     text NOT NULL DEFAULT pg_catalog.current_setting('application_name'),
    action     text NOT NULL,
    subject    text NOT NULL,
    old_value  text,
    new_value  text,
    reason     text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE keyshift.audit_log IS 'Append-only trail of every phase, flag and setting change; UPDATE, DELETE and TRUNCATE are refused';
COMMENT ON COLUMN keyshift.audit_log.id IS 'Order of the changes';
COMMENT ON COLUMN keyshift.audit_log.at IS 'When the change was made (clock time, not transaction start)';
COMMENT ON COLUMN keyshift.audit_log.actor IS 'Database role that logged in (session_user), not a SECURITY DEFINER owner';
COMMENT ON COLUMN keyshift.audit_log.client IS 'application_name of the session; the keyshift CLI puts the operating-system user there';
COMMENT ON COLUMN keyshift.audit_log.action IS 'Kind of change: setting, phase, backfill, force_override, ...';
COMMENT ON COLUMN keyshift.audit_log.subject IS 'What changed: a setting key or a schema.table';
COMMENT ON COLUMN keyshift.audit_log.old_value IS 'Value before the change (NULL when there was none)';
COMMENT ON COLUMN keyshift.audit_log.new_value IS 'Value after the change';
COMMENT ON COLUMN keyshift.audit_log.reason IS 'Why, as the operator gave it; never empty';
COMMENT ON COLUMN keyshift.audit_log.details IS 'Anything else worth keeping about the change';

CREATE FUNCTION keyshift.audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'keyshift.audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit entries are never changed or removed';
END
$fn$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON keyshift.audit_log
    FOR EACH ROW EXECUTE FUNCTION keyshift.audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON keyshift.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION keyshift.audit_log_append_only();

CREATE FUNCTION keyshift.audit(p_action text, p_subject text, p_old text, p_new text,
                               p_reason text, p_details jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    new_id bigint;
BEGIN
    IF p_reason IS NULL OR pg_catalog.btrim(p_reason) = '' THEN
        RAISE EXCEPTION 'a reason is required for % of %', p_action, p_subject
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'say why the change is made (--reason TEXT)';
    END IF;
    INSERT INTO keyshift.audit_log (action, subject, old_value, new_value, reason, details)
    VALUES (p_action, p_subject, p_old, p_new, p_reason, COALESCE(p_details, '{}'))
    RETURNING id INTO new_id;
    RETURN new_id;
END
$fn$;
COMMENT ON FUNCTION keyshift.audit(text, text, text, text, text, jsonb) IS 'Append one entry to the audit log; refuses an empty reason';

-- ---------------------------------------------------------------- settings
CREATE TABLE keyshift.settings (
    key         text PRIMARY KEY,
    value       text,
    kind        text NOT NULL,
    allowed     text[],
    description text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_by  text NOT NULL DEFAULT session_user,
    CONSTRAINT settings_kind_check
        CHECK (kind IN ('bool', 'int', 'numeric', 'text', 'interval', 'enum')),
    CONSTRAINT settings_enum_allowed_check
        CHECK ((kind = 'enum') = (allowed IS NOT NULL)),
    CONSTRAINT settings_key_check
        CHECK (key ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$')
);
COMMENT ON TABLE keyshift.settings IS 'Flags and settings that drive triggers, backfills and checks; change them with keyshift.set_setting so the audit log sees it';
COMMENT ON COLUMN keyshift.settings.key IS 'Dotted name, area first: memberships.dual_write_enabled';
COMMENT ON COLUMN keyshift.settings.value IS 'Current value in its canonical text form; NULL means unset';
COMMENT ON COLUMN keyshift.settings.kind IS 'Type the value must parse as: bool, int, numeric, text, interval or enum';
COMMENT ON COLUMN keyshift.settings.allowed IS 'For kind enum: the values accepted';
COMMENT ON COLUMN keyshift.settings.description IS 'What the setting controls, for operators';
COMMENT ON COLUMN keyshift.settings.updated_at IS 'Last change';
COMMENT ON COLUMN keyshift.settings.updated_by IS 'Role that made the last change';

-- Canonical form of a value for a kind, or an error naming the setting and the rule.
CREATE FUNCTION keyshift.setting_canonical(p_key text, p_kind text, p_allowed text[], p_value text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    END IF;
    CASE p_kind
        WHEN 'bool' THEN RETURN p_value::boolean::text;
        WHEN 'int' THEN RETURN p_value::bigint::text;
        WHEN 'numeric' THEN RETURN p_value::numeric::text;
        WHEN 'interval' THEN RETURN p_value::interval::text;
        WHEN 'enum' THEN
            IF NOT p_value = ANY (p_allowed) THEN
                RAISE EXCEPTION 'setting %: % is not one of %', p_key, p_value, p_allowed
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            RETURN p_value;
        ELSE RETURN p_value;
    END CASE;
EXCEPTION
    WHEN invalid_text_representation OR numeric_value_out_of_range
         OR invalid_datetime_format OR datetime_field_overflow THEN
        RAISE EXCEPTION 'setting %: % is not a valid % value', p_key, p_value, p_kind
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = CASE p_kind WHEN 'bool' THEN 'use true or false'
                                     WHEN 'interval' THEN 'use an interval such as 24 hours'
                                     ELSE 'use a whole number' END;
END
$fn$;

CREATE FUNCTION keyshift.define_setting(p_key text, p_kind text, p_default text,
                                        p_description text, p_allowed text[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
BEGIN
    INSERT INTO keyshift.settings (key, value, kind, allowed, description)
    VALUES (p_key, keyshift.setting_canonical(p_key, p_kind, p_allowed, p_default),
            p_kind, p_allowed, p_description)
    ON CONFLICT (key) DO NOTHING;
END
$fn$;
COMMENT ON FUNCTION keyshift.define_setting(text, text, text, text, text[]) IS 'Declare a setting with its default (revisions call this); an existing setting keeps its value';

CREATE FUNCTION keyshift.setting(p_key text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    v text;
BEGIN
    SELECT s.value INTO v FROM keyshift.settings s WHERE s.key = p_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown setting %', p_key
            USING ERRCODE = 'undefined_object',
                  HINT = 'keyshift status lists the settings this database has';
    END IF;
    RETURN v;
END
$fn$;
COMMENT ON FUNCTION keyshift.setting(text) IS 'Current value of a setting; an unknown key is an error, not NULL';

CREATE FUNCTION keyshift.set_setting(p_key text, p_value text, p_reason text)
RETURNS keyshift.settings
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    -- record, not keyshift.settings: pglast's plpgsql parser resolves row
    -- types only in pg_catalog and public, and every body is parsed first.
    s record;
    new_value text;
BEGIN
    SELECT * INTO s FROM keyshift.settings WHERE key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown setting %', p_key
            USING ERRCODE = 'undefined_object',
                  HINT = 'keyshift status lists the settings this database has';
    END IF;
    new_value := keyshift.setting_canonical(p_key, s.kind, s.allowed, p_value);
    PERFORM keyshift.audit('setting', p_key, s.value, new_value, p_reason);
    UPDATE keyshift.settings
       SET value = new_value, updated_at = pg_catalog.now(), updated_by = session_user
     WHERE key = p_key
    RETURNING * INTO s;
    RETURN s;
END
$fn$;
COMMENT ON FUNCTION keyshift.set_setting(text, text, text) IS 'Change a setting: validates the value for its kind and writes the audit log in the same transaction';

-- ---------------------------------------------------------------- tables under migration
CREATE TABLE keyshift.migrated_tables (
    table_schema     text NOT NULL,
    table_name       text NOT NULL,
    phase            text NOT NULL DEFAULT 'token_only',
    token_column     text NOT NULL DEFAULT 'instrument_token',
    key_column       text NOT NULL DEFAULT 'instrument_key',
    time_column      text,
    identity_columns text[] NOT NULL,
    key_identity_columns text[],
    validation_mode  text NOT NULL DEFAULT 'strict',
    key_only_token_writes text NOT NULL DEFAULT 'refuse',
    registered_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    phase_changed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (table_schema, table_name),
    CONSTRAINT migrated_tables_phase_check
        CHECK (phase IN ('token_only', 'dual', 'key_primary', 'key_only')),
    CONSTRAINT migrated_tables_mode_check
        CHECK (validation_mode IN ('strict', 'lenient')),
    CONSTRAINT migrated_tables_key_only_check
        CHECK (key_only_token_writes IN ('refuse', 'resolve'))
);
COMMENT ON TABLE keyshift.migrated_tables IS 'Tables under the instrument_token -> instrument_key migration and the phase each is in';
COMMENT ON COLUMN keyshift.migrated_tables.table_schema IS 'Schema of the table';
COMMENT ON COLUMN keyshift.migrated_tables.table_name IS 'Name of the table';
COMMENT ON COLUMN keyshift.migrated_tables.phase IS 'token_only -> dual -> key_primary -> key_only; change it with keyshift phase';
COMMENT ON COLUMN keyshift.migrated_tables.token_column IS 'Column holding the broker token';
COMMENT ON COLUMN keyshift.migrated_tables.key_column IS 'Column holding the instrument_key';
COMMENT ON COLUMN keyshift.migrated_tables.time_column IS 'Column whose timestamp resolves a token historically (NULL: resolve at now())';
COMMENT ON COLUMN keyshift.migrated_tables.identity_columns IS 'Columns that identify a row in token_only/dual (its primary key), used for keyset batches and dead letters';
COMMENT ON COLUMN keyshift.migrated_tables.key_identity_columns IS 'Columns of the unique key that replaces the token-based one in key_primary (NULL: the identity does not involve the token)';
COMMENT ON COLUMN keyshift.migrated_tables.validation_mode IS 'strict: an unmapped token or inconsistent pair fails the write; lenient: the write succeeds and a dead letter records it';
COMMENT ON COLUMN keyshift.migrated_tables.key_only_token_writes IS 'In key_only, a write carrying only a token is refused, or resolved and counted as a token-usage violation';
COMMENT ON COLUMN keyshift.migrated_tables.registered_at IS 'When the table came under migration';
COMMENT ON COLUMN keyshift.migrated_tables.phase_changed_at IS 'When the table entered its current phase';

-- ---------------------------------------------------------------- backfill
CREATE TABLE keyshift.backfill_state (
    table_schema   text NOT NULL,
    table_name     text NOT NULL,
    status         text NOT NULL DEFAULT 'pending',
    last_key       jsonb,
    rows_updated   bigint NOT NULL DEFAULT 0,
    rows_dead_lettered bigint NOT NULL DEFAULT 0,
    rows_estimate  bigint,
    batch_size     integer,
    started_at     timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at    timestamptz,
    PRIMARY KEY (table_schema, table_name),
    FOREIGN KEY (table_schema, table_name)
        REFERENCES keyshift.migrated_tables (table_schema, table_name) ON DELETE CASCADE,
    CONSTRAINT backfill_state_status_check
        CHECK (status IN ('pending', 'running', 'paused', 'done', 'failed'))
);
COMMENT ON TABLE keyshift.backfill_state IS 'Checkpoint of each table''s backfill: where the next batch starts, and totals so far';
COMMENT ON COLUMN keyshift.backfill_state.table_schema IS 'Schema of the table';
COMMENT ON COLUMN keyshift.backfill_state.table_name IS 'Name of the table';
COMMENT ON COLUMN keyshift.backfill_state.status IS 'pending, running, paused (stopped by --max-runtime or the client), done, failed';
COMMENT ON COLUMN keyshift.backfill_state.last_key IS 'Identity of the last row of the last committed batch (keyset cursor); NULL: start from the beginning';
COMMENT ON COLUMN keyshift.backfill_state.rows_updated IS 'Rows given a key so far';
COMMENT ON COLUMN keyshift.backfill_state.rows_dead_lettered IS 'Rows that could not be resolved and went to the dead letters';
COMMENT ON COLUMN keyshift.backfill_state.rows_estimate IS 'Row count estimate at start, for progress and ETA';
COMMENT ON COLUMN keyshift.backfill_state.batch_size IS 'Batch size the adaptive controller last chose';
COMMENT ON COLUMN keyshift.backfill_state.started_at IS 'When the first batch ran';
COMMENT ON COLUMN keyshift.backfill_state.updated_at IS 'When the checkpoint last moved';
COMMENT ON COLUMN keyshift.backfill_state.finished_at IS 'When the backfill reached the end of the table';

CREATE TABLE keyshift.backfill_batches (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    from_key     jsonb,
    to_key       jsonb,
    batch_size   integer NOT NULL,
    rows_scanned integer NOT NULL DEFAULT 0,
    rows_updated integer NOT NULL DEFAULT 0,
    rows_dead_lettered integer NOT NULL DEFAULT 0,
    duration_ms  numeric NOT NULL,
    outcome      text NOT NULL,
    error        text,
    at           timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    CONSTRAINT backfill_batches_outcome_check
        CHECK (outcome IN ('ok', 'lock_timeout', 'statement_timeout', 'error'))
);
CREATE INDEX backfill_batches_table_idx ON keyshift.backfill_batches (table_schema, table_name, id);
COMMENT ON TABLE keyshift.backfill_batches IS 'One row per backfill batch: its range, rows, duration and outcome; rate and ETA come from here';
COMMENT ON COLUMN keyshift.backfill_batches.id IS 'Order of the batches';
COMMENT ON COLUMN keyshift.backfill_batches.table_schema IS 'Schema of the table';
COMMENT ON COLUMN keyshift.backfill_batches.table_name IS 'Name of the table';
COMMENT ON COLUMN keyshift.backfill_batches.from_key IS 'Keyset cursor the batch started after';
COMMENT ON COLUMN keyshift.backfill_batches.to_key IS 'Identity of the last row the batch covered';
COMMENT ON COLUMN keyshift.backfill_batches.batch_size IS 'Rows the batch was asked to cover';
COMMENT ON COLUMN keyshift.backfill_batches.rows_scanned IS 'Rows the batch looked at';
COMMENT ON COLUMN keyshift.backfill_batches.rows_updated IS 'Rows the batch gave a key';
COMMENT ON COLUMN keyshift.backfill_batches.rows_dead_lettered IS 'Rows the batch sent to the dead letters';
COMMENT ON COLUMN keyshift.backfill_batches.duration_ms IS 'Wall time of the batch transaction';
COMMENT ON COLUMN keyshift.backfill_batches.outcome IS 'ok, or why the batch was rolled back';
COMMENT ON COLUMN keyshift.backfill_batches.error IS 'Error message of a failed batch';
COMMENT ON COLUMN keyshift.backfill_batches.at IS 'When the batch finished';

-- ---------------------------------------------------------------- dead letters
CREATE TABLE keyshift.dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source          text NOT NULL,
    operation       text NOT NULL,
    row_identity    jsonb,
    payload         jsonb NOT NULL,
    reason          text NOT NULL,
    first_seen      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    last_attempt_at timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    resolved_at     timestamptz,
    resolved_by     text,
    resolution_note text,
    CONSTRAINT dead_letters_operation_check
        CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'BACKFILL', 'SYNC', 'COPY')),
    CONSTRAINT dead_letters_resolution_check
        CHECK ((resolved_at IS NULL) = (resolved_by IS NULL))
);
CREATE INDEX dead_letters_open_idx ON keyshift.dead_letters (source, id) WHERE resolved_at IS NULL;
COMMENT ON TABLE keyshift.dead_letters IS 'Writes that could not be applied, with the reason; nothing is dropped silently';
COMMENT ON COLUMN keyshift.dead_letters.id IS 'Dead letter id, used by keyshift dlq retry and resolve';
COMMENT ON COLUMN keyshift.dead_letters.source IS 'Where it came from: a schema.table, or a named flow such as memberships';
COMMENT ON COLUMN keyshift.dead_letters.operation IS 'The write that failed: INSERT, UPDATE, DELETE, or a BACKFILL/SYNC/COPY batch';
COMMENT ON COLUMN keyshift.dead_letters.row_identity IS 'Identity of the row (its key columns) so it can be found again';
COMMENT ON COLUMN keyshift.dead_letters.payload IS 'The row as written (to_jsonb of NEW or OLD)';
COMMENT ON COLUMN keyshift.dead_letters.reason IS 'Why it could not be applied';
COMMENT ON COLUMN keyshift.dead_letters.first_seen IS 'When it was first dead-lettered';
COMMENT ON COLUMN keyshift.dead_letters.last_attempt_at IS 'When a retry last ran';
COMMENT ON COLUMN keyshift.dead_letters.attempts IS 'Retries made so far';
COMMENT ON COLUMN keyshift.dead_letters.last_error IS 'Error of the last retry';
COMMENT ON COLUMN keyshift.dead_letters.resolved_at IS 'When it was applied by a retry or resolved by hand; NULL while open';
COMMENT ON COLUMN keyshift.dead_letters.resolved_by IS 'Role that resolved it';
COMMENT ON COLUMN keyshift.dead_letters.resolution_note IS 'How it was resolved';

CREATE FUNCTION keyshift.dead_letter(p_source text, p_operation text, p_identity jsonb,
                                     p_payload jsonb, p_reason text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
BEGIN
    -- One open dead letter per row: a row written again while still failing
    -- refreshes its letter instead of adding another.
    IF p_identity IS NOT NULL THEN
        UPDATE keyshift.dead_letters d
           SET payload = p_payload, reason = p_reason, operation = p_operation
         WHERE d.source = p_source AND d.row_identity = p_identity AND d.resolved_at IS NULL;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    INSERT INTO keyshift.dead_letters (source, operation, row_identity, payload, reason)
    VALUES (p_source, p_operation, p_identity, p_payload, p_reason);
END
$fn$;
COMMENT ON FUNCTION keyshift.dead_letter(text, text, jsonb, jsonb, text) IS 'Record a write that could not be applied, with its reason (writers need no privilege on the table)';
CREATE INDEX dead_letters_identity_idx ON keyshift.dead_letters (source, row_identity)
    WHERE resolved_at IS NULL;

-- ---------------------------------------------------------------- reconciliation
CREATE TABLE keyshift.reconcile_pairs (
    name          text PRIMARY KEY,
    kind          text NOT NULL,
    spec          jsonb NOT NULL,
    description   text NOT NULL,
    registered_by text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT reconcile_pairs_kind_check
        CHECK (kind IN ('table', 'mapping', 'relocation', 'key_coverage')),
    CONSTRAINT reconcile_pairs_name_check
        CHECK (name ~ '^[a-z][a-z0-9_.-]*$')
);
COMMENT ON TABLE keyshift.reconcile_pairs IS 'Pairs of relations that keyshift reconcile --all compares; revisions register theirs';
COMMENT ON COLUMN keyshift.reconcile_pairs.name IS 'Name used by keyshift reconcile NAME';
COMMENT ON COLUMN keyshift.reconcile_pairs.kind IS 'table (two relations), mapping (through token -> key), relocation (a slice moved), key_coverage (a token table against the registry)';
COMMENT ON COLUMN keyshift.reconcile_pairs.spec IS 'Source, target, key, columns, slice, bucket and tolerances, as keyshift reconcile reads them';
COMMENT ON COLUMN keyshift.reconcile_pairs.description IS 'What the pair proves, for operators';
COMMENT ON COLUMN keyshift.reconcile_pairs.registered_by IS 'Revision that registered the pair';
COMMENT ON COLUMN keyshift.reconcile_pairs.registered_at IS 'When it was registered';

CREATE TABLE keyshift.reconcile_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pair          text NOT NULL,
    source        text NOT NULL,
    target        text NOT NULL,
    mode          text NOT NULL,
    threshold     numeric NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    duration_ms   numeric NOT NULL,
    rows_source   bigint NOT NULL,
    rows_target   bigint NOT NULL,
    rows_matched  bigint NOT NULL,
    buckets_total integer NOT NULL,
    buckets_mismatched integer NOT NULL,
    match_ratio   numeric NOT NULL,
    verdict       text NOT NULL,
    details       jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT reconcile_runs_mode_check CHECK (mode IN ('strict', 'lenient')),
    CONSTRAINT reconcile_runs_verdict_check CHECK (verdict IN ('pass', 'fail'))
);
CREATE INDEX reconcile_runs_pair_idx ON keyshift.reconcile_runs (pair, id);
COMMENT ON TABLE keyshift.reconcile_runs IS 'Every reconciliation run: counts, checksums per bucket, verdict; keyshift reconcile --history lists them';
COMMENT ON COLUMN keyshift.reconcile_runs.id IS 'Order of the runs';
COMMENT ON COLUMN keyshift.reconcile_runs.pair IS 'Registered pair name, or adhoc:<source>-><target>';
COMMENT ON COLUMN keyshift.reconcile_runs.source IS 'Source relation';
COMMENT ON COLUMN keyshift.reconcile_runs.target IS 'Target relation';
COMMENT ON COLUMN keyshift.reconcile_runs.mode IS 'strict (100%) or lenient (threshold)';
COMMENT ON COLUMN keyshift.reconcile_runs.threshold IS 'Match ratio the verdict required';
COMMENT ON COLUMN keyshift.reconcile_runs.started_at IS 'Start of the run';
COMMENT ON COLUMN keyshift.reconcile_runs.finished_at IS 'End of the run';
COMMENT ON COLUMN keyshift.reconcile_runs.duration_ms IS 'Wall time of the run';
COMMENT ON COLUMN keyshift.reconcile_runs.rows_source IS 'Rows in the source (slice)';
COMMENT ON COLUMN keyshift.reconcile_runs.rows_target IS 'Rows in the target (slice)';
COMMENT ON COLUMN keyshift.reconcile_runs.rows_matched IS 'Rows found equal on both sides';
COMMENT ON COLUMN keyshift.reconcile_runs.buckets_total IS 'Buckets compared';
COMMENT ON COLUMN keyshift.reconcile_runs.buckets_mismatched IS 'Buckets whose count or checksum differed';
COMMENT ON COLUMN keyshift.reconcile_runs.match_ratio IS 'Matched rows over the larger side, 0..1';
COMMENT ON COLUMN keyshift.reconcile_runs.verdict IS 'pass or fail';
COMMENT ON COLUMN keyshift.reconcile_runs.details IS 'Per-bucket counts and checksums, and the differing rows found';

-- ---------------------------------------------------------------- dead-letter retries
-- Each source of dead letters names the function that re-applies one of its
-- rows through the same SQL path as the original write; it raises when the
-- row still cannot be applied.
CREATE TABLE keyshift.dead_letter_sources (
    source           text PRIMARY KEY,
    retry_function   regprocedure NOT NULL,
    attempts_setting text,
    description      text NOT NULL
);
COMMENT ON TABLE keyshift.dead_letter_sources IS 'How keyshift dlq retry re-applies the dead letters of each source';
COMMENT ON COLUMN keyshift.dead_letter_sources.source IS 'dead_letters.source this applies to';
COMMENT ON COLUMN keyshift.dead_letter_sources.retry_function IS 'function(source text, row_identity jsonb, payload jsonb) that re-applies the row or raises';
COMMENT ON COLUMN keyshift.dead_letter_sources.attempts_setting IS 'Setting holding how many retries a letter gets before it stays dead (NULL: dlq.retry_attempts)';
COMMENT ON COLUMN keyshift.dead_letter_sources.description IS 'What a retry does, for operators';

SELECT keyshift.define_setting('dlq.retry_attempts', 'int', '3',
    'Retries a dead letter gets before it stays dead (sources may name their own setting)');

CREATE FUNCTION keyshift.retry_dead_letter(p_id bigint) RETURNS text
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    letter record;
    handler record;
    max_attempts integer;
BEGIN
    SELECT * INTO letter FROM keyshift.dead_letters WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no dead letter %', p_id
            USING ERRCODE = 'undefined_object', HINT = 'keyshift dlq list shows the open ones';
    END IF;
    IF letter.resolved_at IS NOT NULL THEN
        RETURN 'already resolved';
    END IF;
    SELECT * INTO handler FROM keyshift.dead_letter_sources WHERE source = letter.source;
    IF NOT FOUND THEN
        RETURN 'no retry for source ' || letter.source || ': resolve it by hand';
    END IF;
    max_attempts := keyshift.setting(COALESCE(handler.attempts_setting, 'dlq.retry_attempts'))::integer;
    IF letter.attempts >= max_attempts THEN
        RETURN 'dead after ' || letter.attempts || ' attempts';
    END IF;
    BEGIN
        EXECUTE pg_catalog.format('SELECT %s($1, $2, $3)', handler.retry_function::regproc)
           USING letter.source, letter.row_identity, letter.payload;
    EXCEPTION WHEN OTHERS THEN
        UPDATE keyshift.dead_letters
           SET attempts = attempts + 1, last_attempt_at = pg_catalog.clock_timestamp(), last_error = SQLERRM
         WHERE id = p_id;
        RETURN CASE WHEN letter.attempts + 1 >= max_attempts
                    THEN 'dead after ' || (letter.attempts + 1) || ' attempts: ' || SQLERRM
                    ELSE 'failed (attempt ' || (letter.attempts + 1) || ' of ' || max_attempts || '): ' || SQLERRM END;
    END;
    UPDATE keyshift.dead_letters
       SET attempts = attempts + 1, last_attempt_at = pg_catalog.clock_timestamp(), last_error = NULL,
           resolved_at = pg_catalog.clock_timestamp(), resolved_by = session_user,
           resolution_note = 'applied by retry'
     WHERE id = p_id;
    RETURN 'applied';
END
$fn$;
COMMENT ON FUNCTION keyshift.retry_dead_letter(bigint) IS 'Re-apply one dead letter through its source''s retry function; counts the attempt, resolves it on success';

CREATE FUNCTION keyshift.resolve_dead_letter(p_id bigint, p_note text) RETURNS void
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_note IS NULL OR pg_catalog.btrim(p_note) = '' THEN
        RAISE EXCEPTION 'resolving dead letter % needs a note', p_id
            USING ERRCODE = 'invalid_parameter_value', HINT = 'say what was done (--note TEXT)';
    END IF;
    UPDATE keyshift.dead_letters
       SET resolved_at = pg_catalog.clock_timestamp(), resolved_by = session_user, resolution_note = p_note
     WHERE id = p_id AND resolved_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no open dead letter %', p_id
            USING ERRCODE = 'undefined_object', HINT = 'keyshift dlq list shows the open ones';
    END IF;
    PERFORM keyshift.audit('dead_letter', 'dead_letters:' || p_id, 'open', 'resolved', p_note);
END
$fn$;
COMMENT ON FUNCTION keyshift.resolve_dead_letter(bigint, text) IS 'Mark a dead letter resolved by hand, with a note; audit-logged';

-- ---------------------------------------------------------------- flow checkpoints
CREATE TABLE keyshift.flow_state (
    flow        text PRIMARY KEY,
    status      text NOT NULL DEFAULT 'pending',
    last_key    jsonb,
    rows_done   bigint NOT NULL DEFAULT 0,
    rows_dead_lettered bigint NOT NULL DEFAULT 0,
    started_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at timestamptz,
    details     jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT flow_state_status_check CHECK (status IN ('pending', 'running', 'done', 'failed'))
);
COMMENT ON TABLE keyshift.flow_state IS 'Checkpoint of batched flows other than token backfills (memberships sync, retention, copies)';
COMMENT ON COLUMN keyshift.flow_state.flow IS 'Name of the flow: memberships.sync, ...';
COMMENT ON COLUMN keyshift.flow_state.status IS 'pending, running, done, failed';
COMMENT ON COLUMN keyshift.flow_state.last_key IS 'Keyset cursor after the last committed batch';
COMMENT ON COLUMN keyshift.flow_state.rows_done IS 'Rows applied so far in this pass';
COMMENT ON COLUMN keyshift.flow_state.rows_dead_lettered IS 'Rows dead-lettered so far in this pass';
COMMENT ON COLUMN keyshift.flow_state.started_at IS 'Start of the current pass';
COMMENT ON COLUMN keyshift.flow_state.updated_at IS 'Last checkpoint';
COMMENT ON COLUMN keyshift.flow_state.finished_at IS 'End of the last complete pass';
COMMENT ON COLUMN keyshift.flow_state.details IS 'Anything else the flow records';

-- ---------------------------------------------------------------- reconciliation pairs and verdicts
SELECT keyshift.define_setting('reconcile.lenient_threshold', 'numeric', '99.95',
    'Match percentage (0-100) a pair needs to pass keyshift reconcile --mode lenient; strict needs 100');

CREATE FUNCTION keyshift.register_pair(p_name text, p_kind text, p_spec jsonb, p_description text,
                                       p_registered_by text)
RETURNS void
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
BEGIN
    IF pg_catalog.jsonb_typeof(p_spec) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'reconcile pair %: spec must be a JSON object', p_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO keyshift.reconcile_pairs (name, kind, spec, description, registered_by)
    VALUES (p_name, p_kind, p_spec, p_description, p_registered_by)
    ON CONFLICT (name) DO UPDATE
       SET kind = excluded.kind, spec = excluded.spec, description = excluded.description,
           registered_by = excluded.registered_by, registered_at = pg_catalog.now();
END
$fn$;
COMMENT ON FUNCTION keyshift.register_pair(text, text, jsonb, text, text) IS 'Register (or replace) a pair that keyshift reconcile NAME and --all compare; revisions call this';
-- ---------------------------------------------------------------- pre-flight checks (checks/*.sql)
-- Thresholds the checks bind as parameters (their "-- params:" header line).
SELECT keyshift.define_setting('preflight.statement_timeout', 'interval', '10 seconds',
    'Longest one pre-flight check may run (its statement_timeout)');
SELECT keyshift.define_setting('preflight.lock_timeout', 'interval', '1 second',
    'Longest a pre-flight check waits for a lock: a check never queues behind DDL');
SELECT keyshift.define_setting('preflight.min_server_version_num', 'int', '130000',
    'Oldest server_version_num check server_version_supported accepts');
SELECT keyshift.define_setting('preflight.required_extensions', 'text', 'plpgsql,btree_gist',
    'Extensions (comma-separated) the revisions need available on the server');
SELECT keyshift.define_setting('preflight.max_transaction_age', 'interval', '5 minutes',
    'A transaction open longer than this fails check long_transactions');
SELECT keyshift.define_setting('preflight.max_idle_in_transaction', 'interval', '1 minute',
    'A session idle in transaction longer than this fails check idle_in_transaction');
SELECT keyshift.define_setting('preflight.max_lock_hold', 'interval', '10 seconds',
    'A lock on a table the step touches, held by a transaction older than this, fails check locks_on_step_tables');
SELECT keyshift.define_setting('preflight.max_prepared_age', 'interval', '1 minute',
    'A prepared transaction older than this fails check prepared_transactions');
SELECT keyshift.define_setting('preflight.max_replication_lag_bytes', 'int', '67108864',
    'A standby further behind than this many bytes of WAL fails check replication_lag');
SELECT keyshift.define_setting('preflight.max_slot_retained_bytes', 'int', '1073741824',
    'An inactive replication slot retaining this many bytes of WAL or more fails check inactive_replication_slots');
SELECT keyshift.define_setting('preflight.max_open_dead_letters', 'int', '1000',
    'More open dead letters than this fails check dead_letter_backlog');
SELECT keyshift.define_setting('preflight.max_sequence_used_fraction', 'numeric', '0.75',
    'A sequence that has used this fraction of its range (or of its column''s type) fails check sequence_exhaustion');
SELECT keyshift.define_setting('preflight.max_xid_age', 'int', '1000000000',
    'A database whose oldest unfrozen transaction id is older than this fails check xid_wraparound (wraparound stops writes at 2^31)');
