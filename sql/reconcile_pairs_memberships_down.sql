-- Downgrade of sql/reconcile_pairs_memberships.sql.
DELETE FROM keyshift.reconcile_pairs WHERE name = 'index_memberships';
