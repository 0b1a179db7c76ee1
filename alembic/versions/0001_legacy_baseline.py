"""legacy_baseline: the token-centric schema production already has.

Created only where absent. A database that already holds these tables can
equally be stamped: `alembic stamp legacy_baseline`. The downgrade drops the
legacy tables only while all of them are empty.

Revision ID: legacy_baseline
Revises:
"""

from __future__ import annotations

from toolkit import migrate

revision = "legacy_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("legacy_baseline.sql")


def downgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("legacy_baseline_down.sql")
