-- market.bars_1m after the switch: DXY is read from data_bars only (its
-- symbol column still says DXY for old readers); derived_data_bars serves
-- the other synthetic symbols.
SELECT b.instrument_token,
       CASE WHEN b.instrument_key = 'DXY_ICE_INDEX' THEN 'DXY' END::text AS symbol, b.ts,
       b.open, b.high, b.low, b.close, b.volume
  FROM market.data_bars b
 WHERE b.timeframe = '1m'
UNION ALL
SELECT NULL::bigint, d.symbol, d.ts,
       d.open, d.high, d.low, d.close, d.volume
  FROM market.derived_data_bars d
 WHERE d.timeframe = '1m' AND d.symbol <> 'DXY'
