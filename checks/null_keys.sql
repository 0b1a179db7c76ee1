-- id: null_keys
-- severity: error
-- steps: key_primary
-- summary: tables in dual or later with rows that have no instrument_key; SCANS each such table (instant once the key is NOT NULL)
-- remedy: keyshift backfill TABLE, then resolve its dead letters (keyshift dlq list); key_primary refuses while a row has no key
-- requires: keyshift.migrated_tables
select pg_catalog.format('%I.%I', m.table_schema, m.table_name) as "table", m.phase,
       n.rows_without_key
  from keyshift.migrated_tables m
 cross join lateral (
        select (pg_catalog.xpath('/row/n/text()', pg_catalog.query_to_xml(
                    pg_catalog.format('select pg_catalog.count(*) as n from %I.%I where %I is null',
                                      m.table_schema, m.table_name, m.key_column),
                    false, true, '')))[1]::text::bigint as rows_without_key) n
 where m.phase in ('dual', 'key_primary', 'key_only')
   and n.rows_without_key > 0
 order by 1
