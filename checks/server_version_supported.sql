-- id: server_version_supported
-- severity: error
-- steps: any
-- summary: the server is older than the oldest PostgreSQL keyshift supports (preflight.min_server_version_num)
-- remedy: upgrade PostgreSQL (keyshift needs 13 or later; it is developed and tested on 15)
-- params: preflight.min_server_version_num
-- Why: the revisions use features of 13+ (e.g. trigger transition tables with
-- several events, pg_stat_progress_create_index, DROP DATABASE ... FORCE in tests).
select pg_catalog.current_setting('server_version') as server_version,
       pg_catalog.current_setting('server_version_num')::integer as server_version_num,
       $1::integer as minimum
 where pg_catalog.current_setting('server_version_num')::integer < $1::integer
