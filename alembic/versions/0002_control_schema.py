"""control_schema: keyshift's migration state (settings, phases, checkpoints, dead letters, audit).

Revision ID: control_schema
Revises: legacy_baseline
"""

from __future__ import annotations

from toolkit import migrate

revision = "control_schema"
down_revision = "legacy_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("control_schema.sql")


def downgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("control_schema_down.sql")
