-- Reconcile pair of revision index_memberships_dual_write: every legacy
-- membership, its token mapped to a key at effective_from, is in the registry
-- (live or archived) with the same weight and end; unmapped tokens and two
-- tokens mapping to one key are reported as their own categories.
SELECT keyshift.register_pair('index_memberships', 'mapping',
    '{"source": "screener.index_memberships", "target": "instrument_registry.index_memberships_with_archive",
      "token_column": "instrument_token", "key_column": "instrument_key", "at_column": "effective_from",
      "key": ["index_name", "instrument_key", "effective_from"], "columns": ["weight", "effective_to"]}',
    'screener.index_memberships mapped token -> key equals the registry memberships (live and archived)',
    'index_memberships_dual_write');
