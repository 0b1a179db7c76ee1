-- id: xid_wraparound
-- severity: error
-- steps: any
-- summary: the database's oldest unfrozen transaction id is older than preflight.max_xid_age
-- remedy: let autovacuum catch up or run VACUUM (FREEZE) on the oldest tables (listed) before a step that burns transaction ids
-- params: preflight.max_xid_age
-- A backfill commits a transaction per batch and every dual write is one: a
-- database near wraparound (2^31) stops accepting writes to protect itself.
-- The tables listed are the oldest ones, which a VACUUM must freeze first.
select pg_catalog.current_database() as database,
       pg_catalog.age(d.datfrozenxid) as xid_age,
       $1::bigint as threshold,
       (select pg_catalog.string_agg(pg_catalog.format('%I.%I', n.nspname, c.relname), ', '
                                     order by pg_catalog.age(c.relfrozenxid) desc)
          from (select * from pg_catalog.pg_class c0
                 where c0.relkind in ('r', 'm', 't') and c0.relfrozenxid <> '0'::xid
                 order by pg_catalog.age(c0.relfrozenxid) desc limit 3) c
          join pg_catalog.pg_namespace n on n.oid = c.relnamespace) as oldest_tables
  from pg_catalog.pg_database d
 where d.datname = pg_catalog.current_database()
   and pg_catalog.age(d.datfrozenxid) > $1::bigint
