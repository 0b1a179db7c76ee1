-- id: step_revision_applied
-- severity: error
-- steps: backfill, key_primary, key_only, memberships_sync, dxy_copy, cleanup
-- summary: the revision that installs what the step runs has not been applied to this database
-- remedy: alembic upgrade REVISION (the one named), after reviewing its SQL with --sql
-- params: @step, @lineage
select s.step, s.needs as revision_needed
  from (values ('backfill', 'key_columns'),
               ('key_primary', 'key_columns'),
               ('key_only', 'key_columns'),
               ('memberships_sync', 'index_memberships_dual_write'),
               ('dxy_copy', 'dxy_relocation'),
               ('cleanup', 'dxy_relocation')) as s(step, needs)
 where (s.step = $1::text or $1::text = 'all')
   and not (s.needs = any ($2::text[]))
