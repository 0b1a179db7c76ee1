-- id: required_extensions_available
-- severity: error
-- steps: any
-- summary: an extension the revisions need (preflight.required_extensions) is not available on the server
-- remedy: install the server package that ships it (btree_gist is in postgresql-contrib), then run the step again
-- params: preflight.required_extensions
select e.name as extension,
       case when e.name in (select a.name from pg_catalog.pg_available_extensions a)
            then 'available' else 'not available on this server' end as problem
  from pg_catalog.unnest(pg_catalog.string_to_array(pg_catalog.replace($1::text, ' ', ''), ',')) as e(name)
 where e.name <> ''
   and not exists (select from pg_catalog.pg_available_extensions a where a.name = e.name)
