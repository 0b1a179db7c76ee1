-- id: dxy_source_duplicates
-- severity: error
-- steps: dxy_copy
-- summary: DXY 1m bars in market.derived_data_bars with the same timestamp more than once (the copy's keyset and ON CONFLICT need one row per key)
-- remedy: keep one row per ts (compare them first), then add the primary key (symbol, timeframe, ts) if the table lacks it
select d.timeframe, d.ts, count(*) as copies
from market.derived_data_bars d
where d.symbol = 'DXY' and d.timeframe = '1m'
group by d.timeframe, d.ts
having count(*) > 1
order by d.ts;
