-- market.bars_1m while DXY is read from derived_data_bars (before the switch,
-- and after a rollback): DXY rows already copied to data_bars stay out of it.
SELECT b.instrument_token, NULL::text AS symbol, b.ts,
       b.open, b.high, b.low, b.close, b.volume
  FROM market.data_bars b
 WHERE b.timeframe = '1m' AND b.instrument_key IS DISTINCT FROM 'DXY_ICE_INDEX'
UNION ALL
SELECT NULL::bigint, d.symbol, d.ts,
       d.open, d.high, d.low, d.close, d.volume
  FROM market.derived_data_bars d
 WHERE d.timeframe = '1m'
