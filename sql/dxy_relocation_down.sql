-- Undo sql/dxy_relocation.sql: the settings, and DXY's registry row unless a
-- broker token refers to it (then only the metadata keys added here go).
DELETE FROM keyshift.settings WHERE key IN ('dxy.soak_window', 'dxy.max_staleness', 'dxy.batch_size');
DELETE FROM instrument_registry.instruments i
 WHERE i.instrument_key = 'DXY_ICE_INDEX'
   AND NOT EXISTS (SELECT 1 FROM instrument_registry.broker_instrument_tokens t
                    WHERE t.instrument_key = i.instrument_key);
UPDATE instrument_registry.instruments
   SET metadata = metadata - ARRAY['is_synthetic', 'base_timeframe', 'derived_timeframes', 'formula',
                                   'constant', 'components', 'relocated_from']
 WHERE instrument_key = 'DXY_ICE_INDEX';
