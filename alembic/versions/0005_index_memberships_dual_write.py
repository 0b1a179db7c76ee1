"""index_memberships_dual_write: registry memberships fed from the screener in the same transaction.

Revision ID: index_memberships_dual_write
Revises: key_columns
"""

from __future__ import annotations

from toolkit import migrate

revision = "index_memberships_dual_write"
down_revision = "key_columns"
branch_labels = None
depends_on = None

# Frozen parameters of the dual-write (sql/templates/dual_write.sql.j2).
DUAL_WRITE = dict(
    name="memberships",
    source_schema="screener",
    source_table="index_memberships",
    target_schema="instrument_registry",
    target_table="index_memberships",
    archive_table="index_memberships_archive",
    source_key=["index_name", "instrument_token", "effective_from"],
    target_key=["index_name", "instrument_key", "effective_from"],
    token_column="instrument_token",
    key_column="instrument_key",
    at_column="effective_from",
    copy_columns=["index_name", "weight", "effective_from", "effective_to"],
    update_columns=["weight", "effective_to"],
)


def upgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("memberships.sql")
    migrate.run_template("dual_write", **DUAL_WRITE)
    migrate.run_sql_file("reconcile_pairs_memberships.sql")


def downgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("reconcile_pairs_memberships_down.sql")
    migrate.run_template(
        "dual_write_down",
        name=DUAL_WRITE["name"],
        source_schema=DUAL_WRITE["source_schema"],
        source_table=DUAL_WRITE["source_table"],
    )
    migrate.run_sql_file("memberships_down.sql")
