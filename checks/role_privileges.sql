-- id: role_privileges
-- severity: error
-- steps: backfill, key_primary, key_only, memberships_sync, dxy_copy, cleanup
-- summary: the role running keyshift lacks a privilege the step needs (or does not own a table whose DDL it runs)
-- remedy: GRANT the privilege named (or run the step as the table's owner); the step would stop half-way with "permission denied"
-- params: @step
-- requires: keyshift.migrated_tables
-- Objects are looked up in the catalogs by name, not with to_regclass, which
-- raises instead of answering for a schema the role may not use. Objects that
-- do not exist are left to the other checks.
with needs(step, kind, schema_name, object_name, privilege) as (
    select p.step, p.kind, t.table_schema, case when p.kind = 'table' then t.table_name end, p.privilege
      from keyshift.migrated_tables t
     cross join (values ('backfill', 'schema', 'USAGE'), ('backfill', 'table', 'SELECT'),
                        ('backfill', 'table', 'UPDATE'), ('key_primary', 'schema', 'USAGE'),
                        ('key_primary', 'table', 'OWNER'), ('key_only', 'schema', 'USAGE'))
           as p(step, kind, privilege)
    union all
    select v.step, v.kind, v.schema_name, v.object_name, v.privilege
      from (values
            ('backfill', 'schema', 'instrument_registry', null, 'USAGE'),
            ('backfill', 'table', 'instrument_registry', 'broker_instrument_tokens', 'SELECT'),
            ('backfill', 'table', 'keyshift', 'backfill_state', 'UPDATE'),
            ('backfill', 'table', 'keyshift', 'backfill_batches', 'INSERT'),
            ('backfill', 'table', 'keyshift', 'dead_letters', 'INSERT'),
            ('key_primary', 'table', 'keyshift', 'migrated_tables', 'UPDATE'),
            ('key_primary', 'function', 'keyshift', 'set_phase', 'EXECUTE'),
            ('key_only', 'function', 'keyshift', 'set_phase', 'EXECUTE'),
            ('memberships_sync', 'schema', 'screener', null, 'USAGE'),
            ('memberships_sync', 'schema', 'instrument_registry', null, 'USAGE'),
            ('memberships_sync', 'table', 'screener', 'index_memberships', 'SELECT'),
            ('memberships_sync', 'table', 'instrument_registry', 'index_memberships', 'INSERT'),
            ('memberships_sync', 'table', 'instrument_registry', 'index_memberships', 'UPDATE'),
            ('memberships_sync', 'table', 'instrument_registry', 'index_memberships_archive', 'INSERT'),
            ('memberships_sync', 'table', 'keyshift', 'flow_state', 'UPDATE'),
            ('dxy_copy', 'schema', 'market', null, 'USAGE'),
            ('dxy_copy', 'table', 'market', 'derived_data_bars', 'SELECT'),
            ('dxy_copy', 'table', 'market', 'data_bars', 'INSERT'),
            ('dxy_copy', 'table', 'market', 'data_bars', 'UPDATE'),
            ('cleanup', 'schema', 'market', null, 'USAGE'),
            ('cleanup', 'table', 'market', 'derived_data_bars', 'UPDATE'),
            ('cleanup', 'table', 'market', 'derived_data_bars', 'DELETE')
           ) as v(step, kind, schema_name, object_name, privilege)
), resolved as (
    select n.*, ns.oid as nsp, c.oid as rel, c.relowner
      from needs n
      left join pg_catalog.pg_namespace ns on ns.nspname = n.schema_name
      left join pg_catalog.pg_class c on n.kind = 'table' and c.relnamespace = ns.oid
                                     and c.relname = n.object_name
)
select distinct r.step, current_user::text as role, r.kind,
       case when r.kind = 'schema' then pg_catalog.quote_ident(r.schema_name)
            else pg_catalog.format('%I.%I', r.schema_name, r.object_name) end as object,
       r.privilege
  from resolved r
 where (r.step = $1::text or $1::text = 'all')
   and case r.kind
         when 'schema' then r.nsp is not null and not pg_catalog.has_schema_privilege(r.nsp, 'USAGE')
         when 'function' then
              exists (select from pg_catalog.pg_proc p where p.pronamespace = r.nsp and p.proname = r.object_name)
              and not exists (select from pg_catalog.pg_proc p
                               where p.pronamespace = r.nsp and p.proname = r.object_name
                                 and pg_catalog.has_function_privilege(p.oid, 'EXECUTE'))
         when 'table' then
              r.rel is not null
              and case when r.privilege = 'OWNER' then not pg_catalog.pg_has_role(r.relowner, 'USAGE')
                       else not pg_catalog.has_table_privilege(r.rel, r.privilege) end
       end
 order by 1, 4, 5
