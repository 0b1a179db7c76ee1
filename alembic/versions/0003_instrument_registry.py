"""instrument_registry: instruments by key, broker tokens with validity periods, resolve functions.

Revision ID: instrument_registry
Revises: control_schema
"""

from __future__ import annotations

from toolkit import migrate

revision = "instrument_registry"
down_revision = "control_schema"
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("instrument_registry.sql")


def downgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("instrument_registry_down.sql")
