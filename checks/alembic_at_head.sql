-- id: alembic_at_head
-- severity: warning
-- steps: any
-- summary: the database is not at the head revision of this keyshift
-- remedy: review `alembic upgrade head --sql`, then apply it (a cutover may stop before key_primary_contract on purpose: backfill first)
-- params: @head_revision
-- requires: keyshift.alembic_version
select v.version_num as revision, $1::text as head
  from keyshift.alembic_version v
 where v.version_num is distinct from $1::text
