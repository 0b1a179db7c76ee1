-- id: long_transactions
-- severity: error
-- steps: any
-- summary: transactions in this database open longer than preflight.max_transaction_age
-- remedy: let them finish or end them (pg_cancel_backend, then pg_terminate_backend PID) before the step
-- params: preflight.max_transaction_age
-- A long transaction holds its locks until it ends, so DDL queues behind it
-- (and every query queues behind the DDL), and it keeps vacuum from removing
-- the dead rows a backfill leaves. Sessions of other databases do not hold
-- back this database's vacuum (PostgreSQL 14+) nor lock its tables.
select a.pid, a.usename as role, a.application_name as application, a.state,
       pg_catalog.date_trunc('second', pg_catalog.clock_timestamp() - a.xact_start) as transaction_age,
       pg_catalog.left(a.query, 120) as query
  from pg_catalog.pg_stat_activity a
 where a.datname = pg_catalog.current_database()
   and a.pid <> pg_catalog.pg_backend_pid()
   and a.backend_type = 'client backend'
   and a.xact_start < pg_catalog.clock_timestamp() - $1::interval
 order by a.xact_start
