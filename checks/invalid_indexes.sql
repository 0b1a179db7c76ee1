-- id: invalid_indexes
-- severity: error
-- steps: any
-- summary: indexes left INVALID by a failed CREATE INDEX CONCURRENTLY (or REINDEX CONCURRENTLY)
-- remedy: REINDEX INDEX CONCURRENTLY it, or DROP INDEX CONCURRENTLY and build it again; a re-run with IF NOT EXISTS keeps the broken one
-- An invalid index is still maintained on every write (when ready) but never
-- used by queries, and a unique one still rejects duplicates. Builds that are
-- running right now (pg_stat_progress_create_index) are not reported.
select n.nspname as schema, c.relname as index, t.relname as "table",
       case when i.indisready then 'invalid: maintained but not used' else 'invalid and not ready' end as state,
       pg_catalog.pg_size_pretty(pg_catalog.pg_relation_size(c.oid)) as size
  from pg_catalog.pg_index i
  join pg_catalog.pg_class c on c.oid = i.indexrelid
  join pg_catalog.pg_class t on t.oid = i.indrelid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where not i.indisvalid
   and not exists (select from pg_catalog.pg_stat_progress_create_index p where p.index_relid = i.indexrelid)
 order by 1, 2
