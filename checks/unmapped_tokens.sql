-- id: unmapped_tokens
-- severity: error
-- steps: backfill, key_primary
-- summary: rows without a key whose token has no mapping valid at the row's time (count and a sample of tokens); SCANS each table in dual or later
-- remedy: import the broker's instruments that define them (keyshift registry import); rows left unmapped are dead-lettered by the backfill and block key_primary
-- requires: keyshift.migrated_tables, instrument_registry.broker_instrument_tokens
-- One query per table under migration, built with format('%I') and run by
-- query_to_xml (a check is one SELECT). It reads every row without a key.
-- The unmapped rows are counted per token first, and only those few groups
-- are totalled. A count(distinct) or array_agg(distinct) over the rows has no
-- partial form and kept the scan in one process; grouped by token, the
-- planner splits it across parallel workers (PostgreSQL 15: Partial
-- HashAggregate over a Parallel Seq Scan anti-joined to the registry).
with t as (
    select m.table_schema, m.table_name,
           pg_catalog.format(
               'select pg_catalog.count(*) as tokens, coalesce(pg_catalog.sum(u.n), 0) as rows,'
               ' pg_catalog.array_to_string((pg_catalog.array_agg(u.token order by u.token))[1:5], %5$L) as sample'
               ' from (select x.%1$I as token, pg_catalog.count(*) as n'
               ' from %2$I.%3$I x where x.%4$I is null and x.%1$I is not null and not exists ('
               'select from instrument_registry.broker_instrument_tokens r where r.broker = %6$L'
               ' and r.instrument_token = x.%1$I and r.valid_from <= %7$s'
               ' and (r.valid_to is null or r.valid_to > %7$s))'
               ' group by x.%1$I) u',
               m.token_column, m.table_schema, m.table_name, m.key_column, ', ',
               keyshift.setting('registry.legacy_broker'),
               coalesce('x.' || pg_catalog.quote_ident(m.time_column), 'pg_catalog.now()')) as query
      from keyshift.migrated_tables m
     where m.phase in ('dual', 'key_primary', 'key_only')
), counted as (
    select t.table_schema, t.table_name, pg_catalog.query_to_xml(t.query, false, true, '') as x
      from t
)
select pg_catalog.format('%I.%I', c.table_schema, c.table_name) as "table",
       keyshift.setting('registry.legacy_broker') as broker,
       (pg_catalog.xpath('/row/tokens/text()', c.x))[1]::text::bigint as unmapped_tokens,
       (pg_catalog.xpath('/row/rows/text()', c.x))[1]::text::bigint as rows,
       (pg_catalog.xpath('/row/sample/text()', c.x))[1]::text as sample_tokens
  from counted c
 where (pg_catalog.xpath('/row/rows/text()', c.x))[1]::text::bigint > 0
 order by 1
