"""Phase moves: preconditions, online DDL, reversibility, audit, dry runs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.legacy import make_legacy_db
from toolkit import backfill, phases
from toolkit.errors import KeyshiftError


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def table_ddl(dsn: str, table: str) -> str:
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "-t", table, "--dbname", dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


@pytest.fixture
def ready(new_db: Callable[..., str]) -> str:
    """Legacy data, fully backfilled."""
    dsn = make_legacy_db(new_db, minutes=50)
    for table in ("market.data_bars", "market.subscriptions", "trading.positions"):
        assert backfill.run(dsn, table).status == "done"
    return dsn


def test_key_primary_is_refused_while_keys_are_missing(new_db: Callable[..., str]) -> None:
    dsn = make_legacy_db(new_db, minutes=10)
    before = table_ddl(dsn, "market.data_bars")
    with pytest.raises(
        psycopg.Error, match="not ready for key_primary: 30 of 30 rows have no instrument_key"
    ):
        phases.change_phase(dsn, "market.data_bars", "key_primary", "too early")
    assert table_ddl(dsn, "market.data_bars") == before
    with connect(dsn) as conn:
        assert conn.execute(
            "SELECT phase FROM keyshift.migrated_tables WHERE table_name = 'data_bars'"
        ).fetchone() == ("dual",)


def test_key_primary_and_back_restores_the_table(ready: str) -> None:
    dual_ddl = table_ddl(ready, "market.data_bars")
    result = phases.change_phase(ready, "market.data_bars", "key_primary", "cutover step 3")
    assert result["phase"] == "key_primary"
    with connect(ready) as conn:
        pk = conn.execute(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'market.data_bars'::regclass AND indisprimary"
        ).fetchone()
        assert pk is not None and "(instrument_key, timeframe, ts)" in pk[0]
        nullable = dict(
            conn.execute(
                "SELECT attname, NOT attnotnull FROM pg_attribute WHERE attrelid = 'market.data_bars'::regclass"
                " AND attname IN ('instrument_key', 'instrument_token')"
            ).fetchall()
        )
        assert nullable == {"instrument_key": False, "instrument_token": True}
        # A synthetic instrument without a broker token can live here now.
        conn.execute(
            "INSERT INTO instrument_registry.instruments (instrument_key, symbol, exchange, instrument_type)"
            " VALUES ('DXY_ICE_INDEX', 'DXY', 'ICE', 'INDEX')"
        )
        row = conn.execute(
            "INSERT INTO market.data_bars (instrument_key, timeframe, ts, open, high, low, close)"
            " VALUES ('DXY_ICE_INDEX', '1m', now(), 1, 1, 1, 1) RETURNING instrument_token"
        ).fetchone()
        assert row == (None,)
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute(
                "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
                " VALUES (NULL, '1m', now(), 1, 1, 1, 1)"
            )
    # Back to dual is refused while a row has no token ...
    with pytest.raises(
        psycopg.Error, match="1 rows without instrument_token: they cannot return to phase dual"
    ):
        phases.change_phase(ready, "market.data_bars", "dual", "rollback")
    with connect(ready) as conn:
        conn.execute("DELETE FROM market.data_bars WHERE instrument_key = 'DXY_ICE_INDEX'")
    # ... and then restores exactly the dual table.
    phases.change_phase(ready, "market.data_bars", "dual", "rollback")
    assert table_ddl(ready, "market.data_bars") == dual_ddl
    with connect(ready) as conn:
        trail = conn.execute(
            "SELECT subject, old_value, new_value, reason FROM keyshift.audit_log WHERE action = 'phase' ORDER BY id"
        ).fetchall()
    assert trail == [
        ("market.data_bars", "dual", "key_primary", "cutover step 3"),
        ("market.data_bars", "key_primary", "dual", "rollback"),
    ]


@pytest.mark.parametrize("table", ["market.subscriptions", "trading.positions"])
def test_other_tables_round_trip(ready: str, table: str) -> None:
    dual_ddl = table_ddl(ready, table)
    phases.change_phase(ready, table, "key_primary", "cutover")
    assert table_ddl(ready, table) != dual_ddl
    with connect(ready) as conn:
        schema, name = table.split(".")
        assert conn.execute("SELECT keyshift.key_primary_shape(%s, %s)", (schema, name)).fetchone() == (None,)
    phases.change_phase(ready, table, "key_only", "no more tokens")
    phases.change_phase(ready, table, "key_primary", "back")
    phases.change_phase(ready, table, "dual", "back")
    assert table_ddl(ready, table) == dual_ddl


def test_a_half_done_move_can_be_run_again(ready: str) -> None:
    """Every statement of the move is idempotent: rerunning after a failure finishes it."""
    with connect(ready) as conn:
        conn.execute(
            "ALTER TABLE market.data_bars ADD CONSTRAINT data_bars_instrument_key_not_null"
            " CHECK (instrument_key IS NOT NULL) NOT VALID"
        )
        conn.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY data_bars_key_identity_idx ON market.data_bars (instrument_key, timeframe, ts)"
        )
    assert phases.change_phase(ready, "market.data_bars", "key_primary", "resume")["phase"] == "key_primary"


def test_an_invalid_leftover_index_stops_the_move_with_the_remedy(ready: str) -> None:
    with connect(ready) as conn:
        # A failed concurrent build leaves an INVALID index behind (here: duplicates).
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY data_bars_token_identity_idx ON market.data_bars (timeframe)"
            )
    with pytest.raises(
        psycopg.Error, match="(?s)data_bars_token_identity_idx on .* is INVALID .*DROP INDEX CONCURRENTLY"
    ):
        phases.change_phase(ready, "market.data_bars", "key_primary", "with a leftover")
    with connect(ready) as conn:
        conn.execute("DROP INDEX CONCURRENTLY market.data_bars_token_identity_idx")
    assert (
        phases.change_phase(ready, "market.data_bars", "key_primary", "after the remedy")["phase"]
        == "key_primary"
    )


def test_moves_are_one_phase_at_a_time_and_phases_are_known(ready: str, cli: Callable) -> None:  # type: ignore[type-arg]
    with pytest.raises(KeyshiftError, match="move one phase at a time"):
        phases.change_phase(ready, "market.data_bars", "key_only", "skip")
    bad = cli("phase", "market.data_bars", "keyonly", "--reason", "x", dsn=ready)
    assert bad.exit_code == 2 and "'keyonly' is not one of" in bad.stderr
    unknown = cli("phase", "market.nope", "dual", "--reason", "x", dsn=ready)
    assert unknown.exit_code == 2 and "market.nope is not under migration" in unknown.stderr
    no_reason = cli("phase", "market.data_bars", "key_primary", "--reason", " ", dsn=ready)
    assert no_reason.exit_code == 2 and "needs a reason" in no_reason.stderr


def test_dry_run_prints_sql_and_locks_and_changes_nothing(ready: str, cli: Callable) -> None:  # type: ignore[type-arg]
    before = table_ddl(ready, "market.data_bars")
    result = cli("phase", "market.data_bars", "key_primary", "--reason", "plan", "--dry-run", dsn=ready)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert (
        "-- lock: SHARE UPDATE EXCLUSIVE (concurrent build: reads and writes go on); outside a transaction"
        in out
    )
    assert (
        "-- lock: SHARE UPDATE EXCLUSIVE (validation scan: reads and writes go on); in its own transaction"
        in out
    )
    assert 'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "data_bars_key_identity_idx"' in out
    assert table_ddl(ready, "market.data_bars") == before
    with connect(ready) as conn:
        assert conn.execute("SELECT count(*) FROM keyshift.audit_log WHERE action = 'phase'").fetchone() == (
            0,
        )


def test_token_only_and_back_restarts_the_backfill(ready: str) -> None:
    phases.change_phase(ready, "market.data_bars", "token_only", "pause sync")
    with connect(ready) as conn:
        conn.execute(
            "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
            " VALUES (102, '1h', '2026-02-01', 1, 1, 1, 1)"
        )
    phases.change_phase(ready, "market.data_bars", "dual", "resume sync")
    with connect(ready) as conn:
        assert conn.execute(
            "SELECT status, last_key FROM keyshift.backfill_state WHERE table_name = 'data_bars'"
        ).fetchone() == ("pending", None)
    result = backfill.run(ready, "market.data_bars")
    assert result.rows_updated == 1


def test_status_counts_token_only_writes_since_key_primary(ready: str, cli: Callable) -> None:  # type: ignore[type-arg]
    phases.change_phase(ready, "market.subscriptions", "key_primary", "cutover")
    with connect(ready) as conn:
        conn.execute(
            "INSERT INTO market.subscriptions (instrument_token, subscriber) VALUES (102, 'dave'), (102, 'erin')"
        )
        conn.execute(
            "INSERT INTO market.subscriptions (instrument_key, subscriber) VALUES ('M&M_NSE_EQUITY', 'fay')"
        )
    result = cli("status", "--json", dsn=ready)
    assert result.exit_code == 0, result.stderr
    tables = {f"{t['table_schema']}.{t['table_name']}": t for t in json.loads(result.stdout)["tables"]}
    assert tables["market.subscriptions"]["token_only_writes"] == 2
    assert tables["market.subscriptions"]["phase"] == "key_primary"
    assert tables["market.data_bars"]["token_only_writes"] == 0
    assert tables["market.data_bars"]["backfill"] == "done"
    assert tables["market.data_bars"]["backfilled"] == 150
