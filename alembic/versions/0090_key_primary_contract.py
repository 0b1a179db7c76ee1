"""key_primary_contract: the schema side of key_primary for every token table, as a revision.

The same SQL `keyshift phase TABLE key_primary` runs (sql/templates/key_primary.sql.j2):
it first asserts, in SQL, that every row of every table has a key that agrees
with its token, so applied too early it fails with the counts and changes
nothing; then NOT NULL through a validated CHECK, the key identity indexes
built CONCURRENTLY (outside the revision's transaction), the primary-key swap
and the phase. Tables already moved by `keyshift phase` are left as they are.
On a database with legacy rows, apply the revisions before this one, run the
backfill, then `alembic upgrade head`.

Revision ID: key_primary_contract
Revises: keyshift_roles
"""

from __future__ import annotations

from toolkit import migrate

revision = "key_primary_contract"
down_revision = "keyshift_roles"
branch_labels = None
depends_on = None

REASON = "revision key_primary_contract"
# Frozen parameters (the tables of revision key_columns).
TABLES = [
    dict(
        schema="market",
        table="subscriptions",
        token_column="instrument_token",
        key_column="instrument_key",
        token_identity_columns=None,
        key_identity_columns=None,
    ),
    dict(
        schema="market",
        table="data_bars",
        token_column="instrument_token",
        key_column="instrument_key",
        token_identity_columns=["instrument_token", "timeframe", "ts"],
        key_identity_columns=["instrument_key", "timeframe", "ts"],
    ),
    dict(
        schema="trading",
        table="positions",
        token_column="instrument_token",
        key_column="instrument_key",
        token_identity_columns=["account_id", "instrument_token"],
        key_identity_columns=["account_id", "instrument_key"],
    ),
]


def upgrade() -> None:
    migrate.set_timeouts()
    # Every table is checked before any of them changes.
    for table in TABLES:
        migrate.run_template("assert_key_ready", schema=table["schema"], table=table["table"])
    for table in TABLES:
        migrate.run_template("key_primary", reason=REASON, **table)


def downgrade() -> None:
    migrate.set_timeouts()
    for table in reversed(TABLES):
        migrate.run_template("key_primary_revert", reason=REASON, **table)
