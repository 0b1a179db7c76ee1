-- id: stats_visibility
-- severity: warning
-- steps: any
-- summary: the role running the checks cannot see other roles' sessions, so long transactions and lock holders may go unreported
-- remedy: GRANT pg_read_all_stats (or pg_monitor) TO the role that runs keyshift preflight
-- pg_stat_activity shows another role's xact_start, state and query as NULL
-- to a role without pg_read_all_stats: checks that read it would pass blind.
select current_user::text as role, 'not a member of pg_read_all_stats' as problem
 where not (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user)
   and not pg_catalog.pg_has_role('pg_read_all_stats', 'MEMBER')
