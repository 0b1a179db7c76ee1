"""key_columns: instrument_key on every token table, key sync triggers, backfill functions, phase dual.

Revision ID: key_columns
Revises: instrument_registry
"""

from __future__ import annotations

from toolkit import migrate

revision = "key_columns"
down_revision = "instrument_registry"
branch_labels = None
depends_on = None

# Frozen parameters: the tables this revision puts under migration.
TABLES = [
    dict(
        schema="market",
        table="subscriptions",
        token_column="instrument_token",
        key_column="instrument_key",
        time_column="created_at",
        identity_columns=["id"],
        key_identity_columns=None,
    ),
    dict(
        schema="market",
        table="data_bars",
        token_column="instrument_token",
        key_column="instrument_key",
        time_column="ts",
        identity_columns=["instrument_token", "timeframe", "ts"],
        key_identity_columns=["instrument_key", "timeframe", "ts"],
    ),
    dict(
        schema="trading",
        table="positions",
        token_column="instrument_token",
        key_column="instrument_key",
        time_column="updated_at",
        identity_columns=["account_id", "instrument_token"],
        key_identity_columns=["account_id", "instrument_key"],
    ),
]


def upgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("key_sync.sql")
    migrate.run_sql_file("phases.sql")
    for table in TABLES:
        migrate.run_template("key_columns_table", **table)
    migrate.run_sql_file("reconcile_pairs_key_columns.sql")


def downgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("reconcile_pairs_key_columns_down.sql")
    for table in reversed(TABLES):
        migrate.run_template(
            "key_columns_table_down",
            schema=table["schema"],
            table=table["table"],
            key_column=table["key_column"],
        )
    migrate.run_sql_file("key_sync_down.sql")
