-- id: role_privileges
-- severity: error
-- steps: backfill, key_primary, key_only, memberships_sync, dxy_copy, cleanup
-- summary: the role running keyshift lacks a privilege the step needs (or does not own a table whose DDL it runs)
-- remedy: GRANT the privilege named (or run the step as the table's owner); the step would stop half-way with "permission denied"
-- params: @step
-- requires: keyshift.migrated_tables
-- Objects that do not exist are left to the other checks.
with needs(step, kind, object, privilege) as (
    select s.step, 'table', pg_catalog.format('%I.%I', t.table_schema, t.table_name), p.privilege
      from keyshift.migrated_tables t
     cross join (values ('backfill', 'SELECT'), ('backfill', 'UPDATE'),
                        ('key_primary', 'OWNER'), ('key_only', 'UPDATE')) as p(step, privilege)
     cross join lateral (select p.step) s
    union all
    select v.step, v.kind, v.object, v.privilege
      from (values
            ('backfill', 'table', 'instrument_registry.broker_instrument_tokens', 'SELECT'),
            ('backfill', 'table', 'keyshift.backfill_state', 'UPDATE'),
            ('backfill', 'table', 'keyshift.backfill_batches', 'INSERT'),
            ('backfill', 'table', 'keyshift.dead_letters', 'INSERT'),
            ('key_primary', 'table', 'keyshift.migrated_tables', 'UPDATE'),
            ('key_primary', 'function', 'keyshift.set_phase(text,text,text,text)', 'EXECUTE'),
            ('key_only', 'function', 'keyshift.set_phase(text,text,text,text)', 'EXECUTE'),
            ('memberships_sync', 'table', 'screener.index_memberships', 'SELECT'),
            ('memberships_sync', 'table', 'instrument_registry.index_memberships', 'INSERT'),
            ('memberships_sync', 'table', 'instrument_registry.index_memberships', 'UPDATE'),
            ('memberships_sync', 'table', 'instrument_registry.index_memberships_archive', 'INSERT'),
            ('memberships_sync', 'table', 'keyshift.flow_state', 'UPDATE'),
            ('dxy_copy', 'table', 'market.derived_data_bars', 'SELECT'),
            ('dxy_copy', 'table', 'market.data_bars', 'INSERT'),
            ('dxy_copy', 'table', 'market.data_bars', 'UPDATE'),
            ('cleanup', 'table', 'market.derived_data_bars', 'UPDATE'),
            ('cleanup', 'table', 'market.derived_data_bars', 'DELETE')
           ) as v(step, kind, object, privilege)
)
select n.step, current_user::text as role, n.kind, n.object, n.privilege
  from needs n
 where (n.step = $1::text or $1::text = 'all')
   and case
         when n.kind = 'function' then
              pg_catalog.to_regprocedure(n.object) is not null
              and not pg_catalog.has_function_privilege(pg_catalog.to_regprocedure(n.object), n.privilege)
         when n.privilege = 'OWNER' then
              pg_catalog.to_regclass(n.object) is not null
              and not pg_catalog.pg_has_role(
                    (select c.relowner from pg_catalog.pg_class c where c.oid = pg_catalog.to_regclass(n.object)),
                    'USAGE')
         else pg_catalog.to_regclass(n.object) is not null
              and not pg_catalog.has_table_privilege(pg_catalog.to_regclass(n.object), n.privilege)
       end
 order by 1, 4, 5
