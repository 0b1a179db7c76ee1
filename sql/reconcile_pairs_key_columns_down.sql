-- Downgrade of sql/reconcile_pairs_key_columns.sql.
DELETE FROM keyshift.reconcile_pairs WHERE registered_by = 'key_columns' AND kind = 'key_coverage';
