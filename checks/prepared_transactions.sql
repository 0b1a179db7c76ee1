-- id: prepared_transactions
-- severity: error
-- steps: any
-- summary: prepared (two-phase) transactions of this database older than preflight.max_prepared_age
-- remedy: COMMIT PREPARED or ROLLBACK PREPARED 'gid' once the transaction manager that owns it says which
-- params: preflight.max_prepared_age
-- A prepared transaction survives restarts and holds its locks and its xmin
-- until someone ends it: an orphan blocks DDL and vacuum forever.
select p.gid, p.owner, p.prepared,
       pg_catalog.date_trunc('second', pg_catalog.clock_timestamp() - p.prepared) as age
  from pg_catalog.pg_prepared_xacts p
 where p.database = pg_catalog.current_database()
   and p.prepared < pg_catalog.clock_timestamp() - $1::interval
 order by p.prepared
