-- id: inactive_replication_slots
-- severity: error
-- steps: any
-- summary: inactive replication slots retain preflight.max_slot_retained_bytes of WAL or more
-- remedy: reconnect the consumer, or drop the slot if it is abandoned (pg_drop_replication_slot('name')); watch the WAL volume's free space
-- params: preflight.max_slot_retained_bytes
-- A slot nobody reads keeps every WAL segment from its restart_lsn on; a
-- backfill writes WAL in volume and can fill the disk, which stops the server.
-- Slots belong to the cluster, so every database's slots are listed.
with here(lsn) as (
    select case when pg_catalog.pg_is_in_recovery() then pg_catalog.pg_last_wal_receive_lsn()
                else pg_catalog.pg_current_wal_lsn() end
)
select s.slot_name as slot, s.slot_type as type, s.database, s.wal_status,
       pg_catalog.pg_wal_lsn_diff(h.lsn, s.restart_lsn)::bigint as retained_bytes,
       pg_catalog.pg_size_pretty(pg_catalog.pg_wal_lsn_diff(h.lsn, s.restart_lsn)) as retained
  from pg_catalog.pg_replication_slots s cross join here h
 where not s.active
   and s.restart_lsn is not null
   and pg_catalog.pg_wal_lsn_diff(h.lsn, s.restart_lsn) >= $1::bigint
 order by 5 desc
