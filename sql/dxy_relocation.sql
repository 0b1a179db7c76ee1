-- DXY as an instrument of the registry (revision dxy_relocation): a synthetic
-- index without a broker token, computed from six currency pairs. An
-- existing row (registered by hand before) keeps its columns and gains the
-- metadata keys.
INSERT INTO instrument_registry.instruments (instrument_key, symbol, exchange, instrument_type, metadata)
VALUES ('DXY_ICE_INDEX', 'DXY', 'ICE', 'INDEX', '{
    "is_synthetic": true,
    "base_timeframe": "1m",
    "derived_timeframes": ["5m", "1h"],
    "formula": "constant * product(pair_rate ^ weight)",
    "constant": 50.14348112,
    "components": [
        {"pair": "EURUSD", "weight": -0.576},
        {"pair": "USDJPY", "weight": 0.136},
        {"pair": "GBPUSD", "weight": -0.119},
        {"pair": "USDCAD", "weight": 0.091},
        {"pair": "USDSEK", "weight": 0.042},
        {"pair": "USDCHF", "weight": 0.036}
    ],
    "relocated_from": "market.derived_data_bars (symbol DXY)"
}'::jsonb)
ON CONFLICT (instrument_key) DO UPDATE
   SET metadata = instrument_registry.instruments.metadata || excluded.metadata,
       updated_at = pg_catalog.now();

SELECT keyshift.define_setting('dxy.soak_window', 'interval', '24 hours',
    'How long DXY bars keep being written to derived_data_bars after readers switch to data_bars; cleanup is refused until it has passed');
SELECT keyshift.define_setting('dxy.max_staleness', 'interval', '5 minutes',
    'keyshift relocate dxy health fails when the newest DXY 1m bar is older than this (5m and 1h bars: their period plus this)');
SELECT keyshift.define_setting('dxy.batch_size', 'int', '5000',
    'Rows per batch of the DXY copy, cleanup and purge');
