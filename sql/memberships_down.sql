-- Downgrade of index_memberships_dual_write (after the trigger is gone). The
-- legacy table screener.index_memberships is left exactly as it is.
DROP FUNCTION IF EXISTS keyshift.memberships_retention_batch(integer, boolean);
DELETE FROM keyshift.settings WHERE key LIKE 'memberships.%';
DELETE FROM keyshift.flow_state WHERE flow LIKE 'memberships.%';
DROP VIEW IF EXISTS instrument_registry.index_memberships_with_archive;
DROP TABLE IF EXISTS instrument_registry.index_memberships_archive;
DROP TABLE IF EXISTS instrument_registry.index_memberships;
