"""keyshift_roles: keyshift_migrator, keyshift_operator, keyshift_reader and least-privilege grants.

Roles are cluster-wide: created only if absent, dropped by the downgrade only
when nothing in any database depends on them (sql/roles.sql, sql/roles_down.sql).

Revision ID: keyshift_roles
Revises: dxy_relocation
"""

from __future__ import annotations

from toolkit import migrate

revision = "keyshift_roles"
down_revision = "dxy_relocation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("roles.sql")


def downgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("roles_down.sql")
