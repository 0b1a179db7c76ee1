-- id: data_bars_unique_key
-- severity: error
-- steps: dxy_copy
-- summary: market.data_bars has no valid, immediate, non-partial unique index over (instrument_key, timeframe, ts)
-- remedy: move market.data_bars to key_primary (keyshift phase market.data_bars key_primary, or alembic upgrade key_primary_contract), or CREATE UNIQUE INDEX CONCURRENTLY on those columns
-- The DXY copy writes with INSERT ... ON CONFLICT (instrument_key, timeframe, ts):
-- only such an index can arbitrate it (a partial, deferrable or INVALID one
-- cannot), and without it a re-run would duplicate bars.
select 'market.data_bars' as "table",
       case when pg_catalog.to_regclass('market.data_bars') is null then 'table missing'
            else 'no usable unique index over (instrument_key, timeframe, ts)' end as problem
 where not exists (
        select
          from pg_catalog.pg_index i
         where i.indrelid = pg_catalog.to_regclass('market.data_bars')
           and i.indisunique and i.indisvalid and i.indimmediate
           and i.indpred is null and i.indexprs is null
           and i.indnkeyatts = 3
           and (select pg_catalog.array_agg(a.attname::text order by a.attname::text)
                  from pg_catalog.unnest(i.indkey::int2[]) with ordinality as k(attnum, position)
                  join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                 where k.position <= i.indnkeyatts)
               = array['instrument_key', 'timeframe', 'ts'])
