-- id: dual_write_flags
-- severity: error
-- steps: any
-- summary: a dual-write is enabled by its setting (NAME.dual_write_enabled = true) but its trigger keyshift_NAME_dual_write is missing or disabled
-- remedy: ALTER TABLE ... ENABLE TRIGGER keyshift_NAME_dual_write then keyshift memberships sync (the catch-up), or set the flag to false (keyshift rollback memberships) if single-write is meant
-- requires: keyshift.settings
-- The flag says writes reach the new table; a disabled trigger means they do
-- not, and nothing else would tell the operator.
select s.key as setting, s.value, n.trigger,
       case when tg.oid is null then 'trigger missing'
            when tg.tgenabled = 'D' then 'trigger disabled'
            else 'trigger fires only in replica sessions' end as problem,
       tg.tgrelid::regclass::text as "table"
  from keyshift.settings s
 cross join lateral (select 'keyshift_' || pg_catalog.split_part(s.key, '.', 1) || '_dual_write' as trigger) n
  left join pg_catalog.pg_trigger tg on tg.tgname = n.trigger and not tg.tgisinternal
 where pg_catalog.split_part(s.key, '.', 2) = 'dual_write_enabled'
   and s.value = 'true'
   and (tg.oid is null or tg.tgenabled in ('D', 'R'))
 order by 1
