-- id: locks_on_step_tables
-- severity: error
-- steps: backfill, key_primary, key_only, memberships_sync, dxy_copy, cleanup
-- summary: other sessions hold locks on a table the step touches (held longer than preflight.max_lock_hold, or waiting)
-- remedy: wait for those transactions to end or end them (pg_terminate_backend PID); then run the step
-- params: @step, preflight.max_lock_hold
-- requires: keyshift.migrated_tables
-- The step's DDL (key_primary swaps the primary key under ACCESS EXCLUSIVE)
-- and its batches wait behind any conflicting lock, and a waiting request
-- makes every later query on the table queue too. A lock not yet granted
-- means a queue already exists.
with step_names(step, schema_name, table_name) as (
    select s.step, t.table_schema, t.table_name
      from keyshift.migrated_tables t
     cross join (values ('backfill'), ('key_primary'), ('key_only')) as s(step)
    union all
    select v.step, v.schema_name, v.table_name
      from (values ('memberships_sync', 'screener', 'index_memberships'),
                   ('memberships_sync', 'instrument_registry', 'index_memberships'),
                   ('memberships_sync', 'instrument_registry', 'index_memberships_archive'),
                   ('dxy_copy', 'market', 'data_bars'),
                   ('dxy_copy', 'market', 'derived_data_bars'),
                   ('cleanup', 'market', 'data_bars'),
                   ('cleanup', 'market', 'derived_data_bars')) as v(step, schema_name, table_name)
), step_tables(step, rel, name) as (
    -- by name in the catalogs: to_regclass raises for a schema the role may not use
    select sn.step, c.oid, pg_catalog.format('%I.%I', sn.schema_name, sn.table_name)
      from step_names sn
      join pg_catalog.pg_namespace ns on ns.nspname = sn.schema_name
      join pg_catalog.pg_class c on c.relnamespace = ns.oid and c.relname = sn.table_name
)
select distinct st.name as "table", l.pid, a.usename as role, a.application_name as application,
       l.mode, l.granted, a.state,
       pg_catalog.date_trunc('second', pg_catalog.clock_timestamp() - a.xact_start) as held_for,
       pg_catalog.left(a.query, 120) as query
  from step_tables st
  join pg_catalog.pg_locks l on l.locktype = 'relation' and l.relation = st.rel
   and l.database = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database())
  join pg_catalog.pg_stat_activity a on a.pid = l.pid
 where (st.step = $1::text or $1::text = 'all')
   and l.pid <> pg_catalog.pg_backend_pid()
   and (not l.granted or a.xact_start < pg_catalog.clock_timestamp() - $2::interval)
 order by 1, 2
