-- Reconcile pairs of revision key_columns: for each token table, every row has
-- an instrument_key, and it is the key the registry maps the row's token to at
-- the row's own time (keyshift reconcile key_coverage.SCHEMA.TABLE).
SELECT keyshift.register_pair('key_coverage.market.subscriptions', 'key_coverage',
    '{"table": "market.subscriptions", "token_column": "instrument_token", "key_column": "instrument_key",
      "time_column": "created_at", "identity": ["id"]}',
    'market.subscriptions: no row without instrument_key, none whose key disagrees with the registry',
    'key_columns');
SELECT keyshift.register_pair('key_coverage.market.data_bars', 'key_coverage',
    '{"table": "market.data_bars", "token_column": "instrument_token", "key_column": "instrument_key",
      "time_column": "ts", "identity": ["instrument_token", "instrument_key", "timeframe", "ts"]}',
    'market.data_bars: no row without instrument_key, none whose key disagrees with the registry',
    'key_columns');
SELECT keyshift.register_pair('key_coverage.trading.positions', 'key_coverage',
    '{"table": "trading.positions", "token_column": "instrument_token", "key_column": "instrument_key",
      "time_column": "updated_at", "identity": ["account_id", "instrument_token", "instrument_key"]}',
    'trading.positions: no row without instrument_key, none whose key disagrees with the registry',
    'key_columns');
