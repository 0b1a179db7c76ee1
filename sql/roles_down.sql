-- Downgrade of keyshift_roles: every privilege and attribute back as it was,
-- ownership to the role running the downgrade, and each role dropped only
-- when nothing in any database depends on it and no role is a member of it.

GRANT EXECUTE ON FUNCTION keyshift.dual_write_apply__memberships(text, jsonb, jsonb, boolean),
    keyshift.dual_write__memberships() TO PUBLIC;
ALTER FUNCTION keyshift.dual_write__memberships() SECURITY INVOKER;
REVOKE SELECT ON instrument_registry.broker_instrument_tokens FROM PUBLIC;
REVOKE USAGE ON SCHEMA keyshift, instrument_registry FROM PUBLIC;

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
    TO PUBLIC;
ALTER FUNCTION keyshift.backfill__trading__positions(bigint, integer) SECURITY INVOKER RESET search_path;
ALTER FUNCTION keyshift.backfill__market__data_bars(bigint, integer) SECURITY INVOKER RESET search_path;
ALTER FUNCTION keyshift.backfill__market__subscriptions(bigint, integer) SECURITY INVOKER RESET search_path;
ALTER FUNCTION keyshift.dual_write_orphans__memberships(integer) SECURITY INVOKER;
ALTER FUNCTION keyshift.dual_write_sync__memberships(jsonb, integer) SECURITY INVOKER;
ALTER FUNCTION keyshift.memberships_retention_batch(integer, boolean) SECURITY INVOKER;
ALTER FUNCTION keyshift.resolve_dead_letter(bigint, text) SECURITY INVOKER;
ALTER FUNCTION keyshift.retry_dead_letter(bigint) SECURITY INVOKER;
ALTER FUNCTION keyshift.set_setting(text, text, text) SECURITY INVOKER;

DO $revoke$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['keyshift_operator', 'keyshift_reader', 'keyshift_migrator'] LOOP
        EXECUTE pg_catalog.format(
            'REVOKE ALL ON ALL FUNCTIONS IN SCHEMA keyshift, instrument_registry FROM %1$I;'
            'REVOKE ALL ON ALL TABLES IN SCHEMA keyshift, instrument_registry, market, trading, screener FROM %1$I;'
            'REVOKE ALL ON SCHEMA keyshift, instrument_registry, market, trading, screener FROM %1$I', r);
    END LOOP;
END
$revoke$;

-- What keyshift_migrator owns in this database goes back to the role running
-- the downgrade (the one that applied the revisions before it).
REASSIGN OWNED BY keyshift_migrator TO CURRENT_USER;

DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['keyshift_reader', 'keyshift_operator', 'keyshift_migrator'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend d
                            WHERE d.refclassid = 'pg_catalog.pg_authid'::regclass
                              AND d.refobjid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = r))
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                            WHERE m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = r)
                               OR m.member = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = r)) THEN
            BEGIN
                EXECUTE pg_catalog.format('DROP ROLE %I', r);
            EXCEPTION WHEN dependent_objects_still_exist OR undefined_object THEN
                NULL;  -- another database took a dependency (or dropped it) meanwhile: keep it
            END;
        END IF;
    END LOOP;
END
$roles$;
