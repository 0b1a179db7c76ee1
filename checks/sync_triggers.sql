-- id: sync_triggers
-- severity: error
-- steps: any
-- summary: a table whose phase needs the key sync triggers (dual, key_primary, key_only) has one missing or disabled
-- remedy: ALTER TABLE ... ENABLE TRIGGER name (a disabled trigger let writes through unsynced: run keyshift backfill TABLE after), or re-apply revision key_columns for a missing one
-- requires: keyshift.migrated_tables
-- Without them a write can leave token and key disagreeing, silently.
-- Tables are looked up by name in the catalogs (to_regclass raises for a
-- schema the role may not use). 'R' triggers fire only in sessions with session_replication_role = replica.
select pg_catalog.format('%I.%I', t.table_schema, t.table_name) as "table", t.phase, n.trigger,
       case when tg.oid is null then 'missing'
            when tg.tgenabled = 'D' then 'disabled'
            else 'fires only in replica sessions' end as problem
  from keyshift.migrated_tables t
 cross join (values ('keyshift_key_sync'), ('keyshift_key_sync_statement'),
                    ('keyshift_key_verify_insert'), ('keyshift_key_verify_update')) as n(trigger)
  left join pg_catalog.pg_namespace ns on ns.nspname = t.table_schema
  left join pg_catalog.pg_class c on c.relnamespace = ns.oid and c.relname = t.table_name
  left join pg_catalog.pg_trigger tg on tg.tgrelid = c.oid and tg.tgname = n.trigger
 where t.phase in ('dual', 'key_primary', 'key_only')
   and (tg.oid is null or tg.tgenabled in ('D', 'R'))
 order by 1, 3
