-- id: idle_in_transaction
-- severity: error
-- steps: any
-- summary: sessions idle in transaction longer than preflight.max_idle_in_transaction
-- remedy: fix the client that leaves transactions open, end them with pg_terminate_backend PID; consider idle_in_transaction_session_timeout
-- params: preflight.max_idle_in_transaction
-- An idle transaction holds its locks and its snapshot while doing nothing:
-- DDL of the step would queue behind it, and vacuum cannot clean up after it.
select a.pid, a.usename as role, a.application_name as application, a.state,
       pg_catalog.date_trunc('second', pg_catalog.clock_timestamp() - a.state_change) as idle_for,
       pg_catalog.left(a.query, 120) as last_query
  from pg_catalog.pg_stat_activity a
 where a.datname = pg_catalog.current_database()
   and a.pid <> pg_catalog.pg_backend_pid()
   and a.state in ('idle in transaction', 'idle in transaction (aborted)')
   and a.state_change < pg_catalog.clock_timestamp() - $1::interval
 order by a.state_change
