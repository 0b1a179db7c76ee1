-- Least privilege (revision keyshift_roles). Three NOLOGIN roles; grant them
-- to login roles (GRANT keyshift_operator TO alice):
--   keyshift_migrator  owns the schemas keyshift and instrument_registry and
--                      their tables: applies revisions (for the revisions that
--                      alter legacy tables it also needs the legacy owner's role);
--   keyshift_operator  pre-flight, reconcile, backfill, flags, dead letters,
--                      memberships sync and retention; no DDL, and no write to
--                      a legacy table except through keyshift's functions;
--   keyshift_reader    status and reports: reads the control schema and registry.
-- Roles are cluster-wide: each is created only if absent (another database may
-- have made it) and dropped by the downgrade only when nothing depends on it.
-- The privileges are per database and schema.

DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['keyshift_migrator', 'keyshift_operator', 'keyshift_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another session created it meanwhile
            END;
        END IF;
    END LOOP;
END
$roles$;

-- ---------------------------------------------------------------- keyshift_migrator
-- Tables, views and their sequences; functions keep their owner, the role that
-- applied the revisions, whose rights the SECURITY DEFINER ones carry.
ALTER SCHEMA keyshift OWNER TO keyshift_migrator;
ALTER SCHEMA instrument_registry OWNER TO keyshift_migrator;
DO $owners$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN
        SELECT c.oid::regclass
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname IN ('keyshift', 'instrument_registry')
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                            WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                              AND d.deptype = 'e')
         ORDER BY c.oid
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO keyshift_migrator', rel);
    END LOOP;
END
$owners$;
GRANT USAGE ON SCHEMA market, trading, screener TO keyshift_migrator;
GRANT SELECT ON ALL TABLES IN SCHEMA market, trading, screener TO keyshift_migrator;

-- ---------------------------------------------------------------- keyshift_reader
GRANT USAGE ON SCHEMA keyshift, instrument_registry TO keyshift_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA keyshift, instrument_registry TO keyshift_reader;

-- ---------------------------------------------------------------- keyshift_operator
GRANT USAGE ON SCHEMA keyshift, instrument_registry, market, trading, screener TO keyshift_operator;
GRANT SELECT ON ALL TABLES IN SCHEMA keyshift, instrument_registry, market, trading, screener
    TO keyshift_operator;
-- The run state the CLI keeps between batches.
GRANT INSERT ON keyshift.backfill_batches, keyshift.reconcile_runs TO keyshift_operator;
GRANT UPDATE ON keyshift.backfill_state TO keyshift_operator;
GRANT INSERT, UPDATE ON keyshift.flow_state TO keyshift_operator;

-- Everything else an operator changes goes through these functions, which run
-- with their owner's rights (SECURITY DEFINER, search_path pinned): a flag
-- only with its audit entry, a legacy row only the way the backfill or a
-- retry changes it. Nobody else may call them.
ALTER FUNCTION keyshift.set_setting(text, text, text) SECURITY DEFINER;
ALTER FUNCTION keyshift.retry_dead_letter(bigint) SECURITY DEFINER;
ALTER FUNCTION keyshift.resolve_dead_letter(bigint, text) SECURITY DEFINER;
ALTER FUNCTION keyshift.memberships_retention_batch(integer, boolean) SECURITY DEFINER;
ALTER FUNCTION keyshift.dual_write_sync__memberships(jsonb, integer) SECURITY DEFINER;
ALTER FUNCTION keyshift.dual_write_orphans__memberships(integer) SECURITY DEFINER;
-- The backfill batches had no SET clause (they run as the caller); as definers they get one.
ALTER FUNCTION keyshift.backfill__market__subscriptions(bigint, integer)
    SECURITY DEFINER SET search_path = keyshift, pg_catalog, pg_temp;
ALTER FUNCTION keyshift.backfill__market__data_bars(bigint, integer)
    SECURITY DEFINER SET search_path = keyshift, pg_catalog, pg_temp;
ALTER FUNCTION keyshift.backfill__trading__positions(bigint, integer)
    SECURITY DEFINER SET search_path = keyshift, pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION
    keyshift.set_setting(text, text, text),
    keyshift.retry_dead_letter(bigint),
    keyshift.resolve_dead_letter(bigint, text),
    keyshift.memberships_retention_batch(integer, boolean),
    keyshift.dual_write_sync__memberships(jsonb, integer),
    keyshift.dual_write_orphans__memberships(integer),
    keyshift.backfill__market__subscriptions(bigint, integer),
    keyshift.backfill__market__data_bars(bigint, integer),
    keyshift.backfill__trading__positions(bigint, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    keyshift.set_setting(text, text, text),
    keyshift.retry_dead_letter(bigint),
    keyshift.resolve_dead_letter(bigint, text),
    keyshift.memberships_retention_batch(integer, boolean),
    keyshift.dual_write_sync__memberships(jsonb, integer),
    keyshift.dual_write_orphans__memberships(integer),
    keyshift.backfill__market__subscriptions(bigint, integer),
    keyshift.backfill__market__data_bars(bigint, integer),
    keyshift.backfill__trading__positions(bigint, integer)
    TO keyshift_operator;

-- ---------------------------------------------------------------- legacy writers
-- The applications keep writing the legacy tables with their own roles; the
-- key sync triggers run as the writer (no SET clause: it would cost every
-- row), so the writer needs to reach the control schema's helpers and read
-- the token mapping (which is no secret).
GRANT USAGE ON SCHEMA keyshift, instrument_registry TO PUBLIC;
GRANT SELECT ON instrument_registry.broker_instrument_tokens TO PUBLIC;
-- The memberships dual-write applies a screener write to the registry as its
-- owner; until now any role could call the apply function directly and write
-- the registry. Trigger functions need no EXECUTE right to fire.
ALTER FUNCTION keyshift.dual_write__memberships() SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION keyshift.dual_write_apply__memberships(text, jsonb, jsonb, boolean),
    keyshift.dual_write__memberships() FROM PUBLIC;
