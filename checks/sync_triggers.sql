-- id: sync_triggers
-- severity: error
-- steps: any
-- summary: a table whose phase needs the key sync triggers (dual, key_primary, key_only) has one missing or disabled, or its published configuration function is missing or out of date
-- remedy: ALTER TABLE ... ENABLE TRIGGER name (a disabled trigger let writes through unsynced: run keyshift backfill TABLE after), re-apply revision key_columns for a missing one; for the configuration run SELECT keyshift.key_sync_publish('schema', 'table')
-- requires: keyshift.migrated_tables
-- Without them a write can leave token and key disagreeing, silently.
-- Tables are looked up by name in the catalogs (to_regclass raises for a
-- schema the role may not use). 'R' triggers fire only in sessions with session_replication_role = replica.
select pg_catalog.format('%I.%I', t.table_schema, t.table_name) as "table", t.phase, n.trigger,
       case when tg.oid is null then 'missing'
            when tg.tgenabled = 'D' then 'disabled'
            else 'fires only in replica sessions' end as problem
  from keyshift.migrated_tables t
 cross join (values ('keyshift_key_sync'), ('keyshift_key_verify_insert'),
                    ('keyshift_key_verify_update')) as n(trigger)
  left join pg_catalog.pg_namespace ns on ns.nspname = t.table_schema
  left join pg_catalog.pg_class c on c.relnamespace = ns.oid and c.relname = t.table_name
  left join pg_catalog.pg_trigger tg on tg.tgrelid = c.oid and tg.tgname = n.trigger
 where t.phase in ('dual', 'key_primary', 'key_only')
   and (tg.oid is null or tg.tgenabled in ('D', 'R'))
union all
-- The triggers read the table's phase, mode and broker from a constant
-- function that keyshift.key_sync_publish rewrites on every change.
select pg_catalog.format('%I.%I', t.table_schema, t.table_name), t.phase,
       'keyshift.' || pg_catalog.quote_ident('key_cfg__' || t.table_schema || '__' || t.table_name) || '()',
       case when p.oid is null then 'configuration function missing'
            else 'configuration out of date: ' || p.prosrc || ', the tables say '
                 || keyshift.key_sync_config(t.table_schema, t.table_name) end
  from keyshift.migrated_tables t
  left join pg_catalog.pg_proc p
    on p.pronamespace = 'keyshift'::regnamespace and p.pronargs = 0
   and p.proname = 'key_cfg__' || t.table_schema || '__' || t.table_name
 where p.oid is null
    or p.prosrc is distinct from
       'SELECT ' || pg_catalog.quote_literal(keyshift.key_sync_config(t.table_schema, t.table_name)) || '::text'
 order by 1, 3
