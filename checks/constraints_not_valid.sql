-- id: constraints_not_valid
-- severity: warning
-- steps: any
-- summary: CHECK or FOREIGN KEY constraints left NOT VALID (existing rows were never checked)
-- remedy: ALTER TABLE ... VALIDATE CONSTRAINT name (takes SHARE UPDATE EXCLUSIVE: reads and writes go on), or drop it if a failed step left it
-- keyshift adds constraints NOT VALID and validates them in a later
-- statement; one left NOT VALID means a step stopped in between.
select n.nspname as schema, c.relname as "table", k.conname as constraint,
       case k.contype when 'c' then 'CHECK' when 'f' then 'FOREIGN KEY' else k.contype::text end as kind
  from pg_catalog.pg_constraint k
  join pg_catalog.pg_class c on c.oid = k.conrelid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where not k.convalidated
 order by 1, 2, 3
