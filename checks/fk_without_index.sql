-- id: fk_without_index
-- severity: warning
-- steps: any
-- summary: foreign keys whose referencing columns lead no valid index
-- remedy: CREATE INDEX CONCURRENTLY on the referencing columns (in the foreign key's order)
-- Deleting or updating a referenced row then scans the whole referencing
-- table, under a lock, once per row: a batched delete or purge crawls.
select pg_catalog.format('%I.%I', n.nspname, c.relname) as "table", k.conname as foreign_key,
       k.confrelid::regclass::text as referenced,
       (select pg_catalog.string_agg(a.attname::text, ', ' order by u.position)
          from pg_catalog.unnest(k.conkey) with ordinality as u(attnum, position)
          join pg_catalog.pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.attnum) as columns
  from pg_catalog.pg_constraint k
  join pg_catalog.pg_class c on c.oid = k.conrelid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where k.contype = 'f'
   and not exists (
        select
          from pg_catalog.pg_index i
         where i.indrelid = k.conrelid and i.indisvalid and i.indpred is null
           and (i.indkey::int2[])[0:pg_catalog.cardinality(k.conkey) - 1] operator(pg_catalog.@>) k.conkey
           and (i.indkey::int2[])[0:pg_catalog.cardinality(k.conkey) - 1] operator(pg_catalog.<@) k.conkey)
 order by 1, 2
