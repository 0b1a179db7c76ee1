-- id: replication_lag
-- severity: error
-- steps: backfill, dxy_copy, memberships_sync, cleanup, key_primary
-- summary: a standby is further behind than preflight.max_replication_lag_bytes of WAL
-- remedy: wait for the standby to catch up (or find why it lags) before a step that writes a lot of WAL
-- params: preflight.max_replication_lag_bytes
-- A batched step writes WAL faster than a lagging standby replays it: reads
-- there go stale and, with a slot, WAL piles up on the primary.
with here(lsn) as (
    select case when pg_catalog.pg_is_in_recovery() then pg_catalog.pg_last_wal_receive_lsn()
                else pg_catalog.pg_current_wal_lsn() end
)
select r.application_name as standby, r.client_addr::text as address, r.state,
       pg_catalog.pg_wal_lsn_diff(h.lsn, coalesce(r.replay_lsn, r.flush_lsn, r.sent_lsn))::bigint as lag_bytes,
       r.replay_lag
  from pg_catalog.pg_stat_replication r cross join here h
 where pg_catalog.pg_wal_lsn_diff(h.lsn, coalesce(r.replay_lsn, r.flush_lsn, r.sent_lsn)) > $1::bigint
 order by 4 desc
