"""Revision key_primary_contract: refuses early with the counts, applies online, reverts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy

from tests.conftest import schema_dump
from tests.legacy import make_legacy_db
from toolkit import backfill, migrate, phases

TABLES = ("market.subscriptions", "market.data_bars", "trading.positions")


def phase_of(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(
            conn.execute(
                "SELECT table_schema || '.' || table_name, phase FROM keyshift.migrated_tables"
            ).fetchall()
        )


def before_contract() -> str:
    """The revision the contract follows (the chain grows before it)."""
    return str(migrate.script().get_revision("key_primary_contract").down_revision)


def version(dsn: str) -> Any:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT version_num FROM keyshift.alembic_version").fetchone()


def test_contract_applied_too_early_fails_with_counts_and_changes_nothing(new_db: Callable[..., str]) -> None:
    dsn = make_legacy_db(new_db, minutes=5)
    for table in ("market.subscriptions", "trading.positions"):
        backfill.run(dsn, table)  # data_bars is left without keys
    migrate.upgrade(dsn, before_contract())
    before = schema_dump(dsn)
    with pytest.raises(
        sqlalchemy.exc.DBAPIError, match="market.data_bars is not ready for key_primary: 15 of 15 rows"
    ):
        migrate.upgrade(dsn, "key_primary_contract")
    assert schema_dump(dsn) == before
    assert version(dsn) == (before_contract(),)


def test_contract_after_backfill_moves_every_table_and_its_downgrade_restores_dual(
    new_db: Callable[..., str],
) -> None:
    dsn = make_legacy_db(new_db, minutes=5)
    for table in TABLES:
        backfill.run(dsn, table)
    migrate.upgrade(dsn, before_contract())
    # One table was already moved by the operator: the revision leaves it be.
    phases.change_phase(dsn, "trading.positions", "key_primary", "moved by hand")
    phases.change_phase(dsn, "trading.positions", "dual", "moved back by hand")
    dual = schema_dump(dsn)
    phases.change_phase(dsn, "trading.positions", "key_primary", "moved by hand")
    migrate.upgrade(dsn, "key_primary_contract")
    assert phase_of(dsn) == dict.fromkeys(TABLES, "key_primary")
    migrate.downgrade(dsn, before_contract())
    assert phase_of(dsn) == dict.fromkeys(TABLES, "dual")
    assert schema_dump(dsn) == dual
