-- id: alembic_revision_known
-- severity: error
-- steps: any
-- summary: the database's revision is not one of this keyshift's, or the version table has several rows
-- remedy: use the keyshift release that applied that revision (keyshift db history lists this one's), or find out who changed keyshift.alembic_version
-- params: @revisions
-- requires: keyshift.alembic_version
select v.version_num as revision, 'not a revision of this keyshift' as problem
  from keyshift.alembic_version v
 where not (v.version_num = any ($1::text[]))
union all
select pg_catalog.string_agg(v.version_num, ', '), pg_catalog.count(*) || ' rows: the chain has branched'
  from keyshift.alembic_version v
having pg_catalog.count(*) > 1
