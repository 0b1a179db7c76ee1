-- Phases of a token table (revision key_columns):
--   token_only -> dual -> key_primary -> key_only, one step at a time, each reversible.
-- keyshift.set_phase checks a move's preconditions against the data and the
-- catalog and writes the audit log; the DDL a move needs (online-safe, some
-- of it CONCURRENTLY, so outside any function) runs before it, from
-- sql/templates/key_primary.sql.j2 and key_primary_revert.sql.j2.

-- How far a table is from key_primary: one pass, resolving every row's token
-- at its time with a hash join on the registry (periods never overlap, so a
-- row meets at most one mapping).
CREATE FUNCTION keyshift.key_readiness(p_schema text, p_table text,
                                       OUT total_rows bigint, OUT null_keys bigint,
                                       OUT inconsistent bigint, OUT unmapped bigint)
LANGUAGE plpgsql STABLE
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    m record;
    v_broker text := keyshift.setting('registry.legacy_broker');
BEGIN
    SELECT * INTO m FROM keyshift.migrated_tables
     WHERE table_schema = p_schema AND table_name = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%.% is not under migration', p_schema, p_table
            USING ERRCODE = 'undefined_table', HINT = 'keyshift status lists the tables under migration';
    END IF;
    EXECUTE pg_catalog.format(
        'SELECT count(*),
                count(*) FILTER (WHERE t.%2$I IS NULL),
                count(*) FILTER (WHERE t.%2$I IS NOT NULL AND t.%3$I IS NOT NULL
                                 AND r.instrument_key IS DISTINCT FROM t.%2$I),
                count(*) FILTER (WHERE t.%3$I IS NOT NULL AND r.instrument_key IS NULL)
           FROM %1$s AS t
           LEFT JOIN instrument_registry.broker_instrument_tokens AS r
             ON r.broker = $1 AND r.instrument_token = t.%3$I
            AND r.valid_from <= %4$s AND (r.valid_to IS NULL OR r.valid_to > %4$s)',
        pg_catalog.format('%I.%I', m.table_schema, m.table_name), m.key_column, m.token_column,
        CASE WHEN m.time_column IS NULL THEN 'pg_catalog.now()'
             ELSE pg_catalog.format('t.%I', m.time_column) END)
    INTO total_rows, null_keys, inconsistent, unmapped
    USING v_broker;
END
$fn$;
COMMENT ON FUNCTION keyshift.key_readiness(text, text) IS 'Rows, rows without a key, rows whose key disagrees with their token, rows whose token has no mapping (scans the table)';

CREATE FUNCTION keyshift.assert_key_ready(p_schema text, p_table text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM keyshift.key_readiness(p_schema, p_table);
    IF r.null_keys > 0 OR r.inconsistent > 0 THEN
        RAISE EXCEPTION '%.% is not ready for key_primary: % of % rows have no instrument_key, % have a key that disagrees with their token',
                        p_schema, p_table, r.null_keys, r.total_rows, r.inconsistent
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'run keyshift backfill, repair the dead letters (keyshift dlq list), then try again';
    END IF;
END
$fn$;
COMMENT ON FUNCTION keyshift.assert_key_ready(text, text) IS 'Refuse unless every row has a key that agrees with its token (scans the table)';

CREATE FUNCTION keyshift.phase_rank(p_phase text) RETURNS integer
LANGUAGE sql IMMUTABLE
RETURN pg_catalog.array_position(ARRAY['token_only', 'dual', 'key_primary', 'key_only'], p_phase);

-- Whether the table's catalog is in the key_primary shape: key NOT NULL
-- (attribute or validated CHECK), and the key identity enforced (primary key
-- over key_identity_columns, or an index on the key where the identity does
-- not involve the token).
CREATE FUNCTION keyshift.key_primary_shape(p_schema text, p_table text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    m record;
    rel oid;
    key_attnum smallint;
    pk_columns text[];
BEGIN
    SELECT * INTO m FROM keyshift.migrated_tables WHERE table_schema = p_schema AND table_name = p_table;
    rel := pg_catalog.format('%I.%I', p_schema, p_table)::regclass;
    SELECT a.attnum INTO key_attnum FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = rel AND a.attname = m.key_column AND NOT a.attisdropped;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = rel AND a.attnum = key_attnum AND a.attnotnull)
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c
                        WHERE c.conrelid = rel AND c.contype = 'c' AND c.convalidated
                          AND c.conname = m.table_name || '_' || m.key_column || '_not_null') THEN
        RETURN pg_catalog.format('%I is not NOT NULL (no validated %I check)', m.key_column,
                                 m.table_name || '_' || m.key_column || '_not_null');
    END IF;
    IF m.key_identity_columns IS NOT NULL THEN
        SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.ord) INTO pk_columns
          FROM pg_catalog.pg_index i
          CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = rel AND i.indisprimary;
        IF pk_columns IS DISTINCT FROM m.key_identity_columns THEN
            RETURN pg_catalog.format('primary key is (%s), not (%s)',
                                     pg_catalog.array_to_string(pk_columns, ', '),
                                     pg_catalog.array_to_string(m.key_identity_columns, ', '));
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                       WHERE i.indrelid = rel AND i.indisvalid AND i.indkey[0] = key_attnum) THEN
        RETURN pg_catalog.format('no valid index leads with %I', m.key_column);
    END IF;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION keyshift.key_primary_shape(text, text) IS 'NULL when the table''s catalog is in the key_primary shape, else what is missing';

CREATE FUNCTION keyshift.set_phase(p_schema text, p_table text, p_phase text, p_reason text)
RETURNS text
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    m record;
    missing text;
    readiness record;
    details jsonb := '{}';
BEGIN
    SELECT * INTO m FROM keyshift.migrated_tables
     WHERE table_schema = p_schema AND table_name = p_table FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%.% is not under migration', p_schema, p_table
            USING ERRCODE = 'undefined_table', HINT = 'keyshift status lists the tables under migration';
    END IF;
    IF keyshift.phase_rank(p_phase) IS NULL THEN
        RAISE EXCEPTION 'unknown phase %', p_phase
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'phases are token_only, dual, key_primary, key_only';
    END IF;
    IF p_phase = m.phase THEN
        RETURN m.phase;
    END IF;
    IF pg_catalog.abs(keyshift.phase_rank(p_phase) - keyshift.phase_rank(m.phase)) <> 1 THEN
        RAISE EXCEPTION '%.% is in phase %: move one phase at a time (token_only, dual, key_primary, key_only)',
                        p_schema, p_table, m.phase
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    IF p_phase = 'key_primary' AND m.phase = 'dual' THEN
        missing := keyshift.key_primary_shape(p_schema, p_table);
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION '%.% cannot enter key_primary: %', p_schema, p_table, missing
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'run keyshift phase, which applies the DDL first';
        END IF;
        SELECT * INTO readiness FROM keyshift.key_readiness(p_schema, p_table);
        IF readiness.inconsistent > 0 OR readiness.null_keys > 0 THEN
            RAISE EXCEPTION '%.% cannot enter key_primary: % rows have a key that disagrees with their token',
                            p_schema, p_table, readiness.inconsistent
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'keyshift dlq list shows them; repair, then try again';
        END IF;
        details := pg_catalog.to_jsonb(readiness);
    ELSIF p_phase = 'dual' AND m.phase = 'key_primary' THEN
        IF keyshift.key_primary_shape(p_schema, p_table) IS NULL AND m.key_identity_columns IS NOT NULL THEN
            RAISE EXCEPTION '%.% still has its key_primary shape', p_schema, p_table
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'run keyshift phase, which reverts the DDL first';
        END IF;
    ELSIF p_phase = 'dual' AND m.phase = 'token_only' THEN
        -- Rows written in token_only have no key: the backfill starts over.
        UPDATE keyshift.backfill_state
           SET status = 'pending', last_key = NULL, finished_at = NULL, updated_at = pg_catalog.now()
         WHERE table_schema = p_schema AND table_name = p_table;
    END IF;

    UPDATE keyshift.migrated_tables
       SET phase = p_phase, phase_changed_at = pg_catalog.now()
     WHERE table_schema = p_schema AND table_name = p_table;
    PERFORM keyshift.audit('phase', p_schema || '.' || p_table, m.phase, p_phase, p_reason, details);
    RETURN p_phase;
END
$fn$;
COMMENT ON FUNCTION keyshift.set_phase(text, text, text, text) IS 'Move a table to an adjacent phase after checking its preconditions; audit-logged';

CREATE FUNCTION keyshift.set_table_option(p_schema text, p_table text, p_option text, p_value text,
                                          p_reason text)
RETURNS void
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    old_value text;
BEGIN
    IF p_option NOT IN ('validation_mode', 'key_only_token_writes') THEN
        RAISE EXCEPTION 'unknown table option %', p_option
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'options are validation_mode (strict|lenient) and key_only_token_writes (refuse|resolve)';
    END IF;
    EXECUTE pg_catalog.format('SELECT %I FROM keyshift.migrated_tables WHERE table_schema = $1 AND table_name = $2 FOR UPDATE', p_option)
       INTO old_value USING p_schema, p_table;
    IF old_value IS NULL THEN
        RAISE EXCEPTION '%.% is not under migration', p_schema, p_table
            USING ERRCODE = 'undefined_table';
    END IF;
    PERFORM keyshift.audit('table_option', p_schema || '.' || p_table || ':' || p_option, old_value, p_value, p_reason);
    EXECUTE pg_catalog.format('UPDATE keyshift.migrated_tables SET %I = $3 WHERE table_schema = $1 AND table_name = $2', p_option)
       USING p_schema, p_table, p_value;
END
$fn$;
COMMENT ON FUNCTION keyshift.set_table_option(text, text, text, text, text) IS 'Set a table''s validation_mode or key_only_token_writes; audit-logged (the table''s CHECK constraints validate the value)';
