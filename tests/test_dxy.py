"""DXY relocation: copy, write function, reader switch, soak and cleanup guard, purge, rollback, downgrade."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.legacy import seed_registry
from toolkit import migrate, phases, reconcile, relocation, render

START = "2026-11-01 00:00:00+00"
DAYS = 3
MINUTES = DAYS * 24 * 60
DXY_SOURCE = "FROM market.derived_data_bars WHERE symbol = 'DXY' AND timeframe = '1m'"
DXY_TARGET = "FROM market.data_bars WHERE instrument_key = 'DXY_ICE_INDEX' AND timeframe = '1m'"
BAR = "ts, open::text, high::text, low::text, close::text, volume"


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def seed(dsn: str, minutes: int = MINUTES, start: str = START) -> None:
    """DXY 1m bars in derived_data_bars (every other minute of the first hour missing: late
    bars land there), another symbol, and a few broker bars in data_bars."""
    with connect(dsn) as conn:
        seed_registry(conn)
        conn.execute(
            "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close, volume)"
            " SELECT 'DXY', '1m', %s::timestamptz + m * interval '1 minute',"
            "        100 + m / 1000.0, 101 + m / 1000.0, 99 + m / 1000.0, 100.5 + m / 1000.0, m"
            " FROM generate_series(0, %s - 1) m WHERE m >= 60 OR m %% 2 = 0",
            (start, minutes),
        )
        conn.execute(
            "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close)"
            " SELECT 'EURX', '1m', %s::timestamptz + m * interval '1 minute', 1, 1, 1, 1"
            " FROM generate_series(0, 99) m",
            (start,),
        )
        conn.execute(
            "INSERT INTO market.data_bars (instrument_key, timeframe, ts, open, high, low, close)"
            " SELECT 'M&M_NSE_EQUITY', '1m', %s::timestamptz + m * interval '1 minute', 5, 6, 4, 5"
            " FROM generate_series(0, 99) m",
            (start,),
        )


@pytest.fixture
def dsn(head_dsn: str) -> str:
    seed(head_dsn)
    return head_dsn


def source_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {BAR} {DXY_SOURCE} ORDER BY ts").fetchall()


def target_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {BAR} {DXY_TARGET} ORDER BY ts").fetchall()


def per_day(conn: psycopg.Connection[Any], where: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        f"SELECT (ts AT TIME ZONE 'UTC')::date, count(*) {where} GROUP BY 1 ORDER BY 1"
    ).fetchall()


def step(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT step FROM keyshift.relocations WHERE name = 'dxy_1m_bars'").fetchone()
    assert row is not None
    return str(row[0])


def write_bar(conn: psycopg.Connection[Any], ts: str, price: float = 42.0) -> str:
    row = conn.execute(
        "SELECT market.write_dxy_bar(%s::timestamptz, %s::numeric, %s::numeric, %s::numeric, %s::numeric, 7)",
        (ts, price, price + 1, price - 1, price),
    ).fetchone()
    assert row is not None
    return str(row[0])


def reconciled(conn: psycopg.Connection[Any]) -> str:
    """Run the reconcile engine on the relocation's pair; its verdict."""
    return reconcile.run_pair(conn, "dxy_1m_bars").verdict


def switched(dsn: str) -> None:
    relocation.copy(dsn, "dxy", batch_size=1000)
    relocation.switch(dsn, "dxy", "test switch")


def view_dxy(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute(
        "SELECT count(*), count(DISTINCT ts) FROM market.bars_1m WHERE symbol = 'DXY'"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def kill_when_waiting(
    dsn: str, admin: psycopg.Connection[Any], function: str, call: Callable[[], Any]
) -> None:
    """Run ``call`` in a thread until its backend waits on a lock inside ``function``, then kill that backend."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the killed connection
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    pid = None
    for _ in range(200):
        found = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE %s",
            (f"%{function}%",),
        ).fetchone()
        if found:
            pid = found[0]
            break
        time.sleep(0.05)
    assert pid is not None, f"{function} never waited on the lock"
    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    thread.join()
    assert errors and isinstance(errors[0], psycopg.OperationalError)


# ---------------------------------------------------------------- revision


def test_revision_registers_dxy_its_pair_and_settings(head_conn: psycopg.Connection[Any]) -> None:
    key, meta = head_conn.execute(
        "SELECT instrument_key, metadata FROM instrument_registry.instruments WHERE symbol = 'DXY'"
    ).fetchone() or (None, None)
    assert key == "DXY_ICE_INDEX"
    assert meta["is_synthetic"] is True and meta["base_timeframe"] == "1m"
    assert meta["derived_timeframes"] == ["5m", "1h"]
    assert [c["pair"] for c in meta["components"]] == [
        "EURUSD",
        "USDJPY",
        "GBPUSD",
        "USDCAD",
        "USDSEK",
        "USDCHF",
    ]
    assert round(sum(abs(c["weight"]) for c in meta["components"]), 6) == 1.0
    kind, spec = head_conn.execute(
        "SELECT kind, spec FROM keyshift.reconcile_pairs WHERE name = 'dxy_1m_bars'"
    ).fetchone() or (None, None)
    assert kind == "relocation"
    assert spec == json.loads(
        '{"source":"market.derived_data_bars","target":"market.data_bars","key":["timeframe","ts"],'
        '"columns":["open","high","low","close","volume"],"source_slice":{"symbol":"DXY","timeframe":"1m"},'
        '"target_slice":{"instrument_key":"DXY_ICE_INDEX","timeframe":"1m"},"bucket_by":"ts:day",'
        '"source_marker":"relocated_at"}'
    )
    settings = dict(
        head_conn.execute("SELECT key, value FROM keyshift.settings WHERE key LIKE 'dxy.%'").fetchall()
    )
    assert settings == {
        "dxy.soak_window": "24:00:00",
        "dxy.max_staleness": "00:05:00",
        "dxy.batch_size": "5000",
    }
    assert step(head_conn) == "installed"


# ---------------------------------------------------------------- copy


def test_copy_equals_source_per_day_while_bars_are_written(dsn: str) -> None:
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        with connect(dsn) as conn:
            n = 0
            while not stop.is_set():
                # New bars after the history, and late bars into the gaps of the first hour.
                write_bar(conn, f"2026-11-04 00:{n % 60:02d}:00+00")
                write_bar(conn, f"2026-11-01 00:{(2 * n + 1) % 60:02d}:00+00")
                written.append(str(n))
                n += 1
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = relocation.copy(dsn, "dxy", batch_size=300)
    finally:
        stop.set()
        thread.join()
    assert written, "the writer wrote nothing while the copy ran"
    assert result["batches"] > 10
    assert result["mismatched_days"] == {}
    assert {"dxy_source_duplicates", "data_bars_unique_key"} <= set(result["preflight"])
    with connect(dsn) as conn:
        assert step(conn) == "copied"
        assert per_day(conn, DXY_TARGET) == per_day(conn, DXY_SOURCE)
        assert target_rows(conn) == source_rows(conn)
        assert len(source_rows(conn)) > MINUTES - 30
        # Nothing outside the slice moved.
        assert conn.execute(
            "SELECT count(*) FROM market.data_bars WHERE instrument_key <> 'DXY_ICE_INDEX'"
        ).fetchone() == (100,)


def test_copy_rerun_is_idempotent(dsn: str) -> None:
    first = relocation.copy(dsn, "dxy", batch_size=1000)
    with connect(dsn) as conn:
        before = target_rows(conn)
    second = relocation.copy(dsn, "dxy", batch_size=1000)
    assert first["rows_inserted"] == len(before) and second["rows_inserted"] == 0
    assert second["rows_read"] == first["rows_read"] and second["resumed"] is False
    with connect(dsn) as conn:
        assert target_rows(conn) == before == source_rows(conn)


def test_copy_resumes_after_being_killed_mid_batch(dsn: str) -> None:
    with connect(dsn) as blocker, connect(dsn) as admin:
        # An uncommitted insert of a key the third batch copies: that batch waits on it.
        row = blocker.execute(f"SELECT ts {DXY_SOURCE} ORDER BY ts OFFSET 2500 LIMIT 1").fetchone()
        assert row is not None
        blocker.execute("BEGIN")
        blocker.execute(
            "INSERT INTO market.data_bars (instrument_key, timeframe, ts, open, high, low, close)"
            " VALUES ('DXY_ICE_INDEX', '1m', %s, 0, 0, 0, 0)",
            (row[0],),
        )
        kill_when_waiting(
            dsn, admin, "relocation_copy_batch", lambda: relocation.copy(dsn, "dxy", batch_size=1000)
        )
        blocker.execute("ROLLBACK")
        state = admin.execute(
            "SELECT status, rows_done, last_key FROM keyshift.flow_state WHERE flow = 'relocation.dxy_1m_bars.copy'"
        ).fetchone()
        assert state is not None and state[0] == "running" and state[1] == 2000
        assert admin.execute(f"SELECT count(*) {DXY_TARGET}").fetchone() == (2000,)
    result = relocation.copy(dsn, "dxy", batch_size=1000)
    assert result["resumed"] is True
    with connect(dsn) as conn:
        assert result["rows_inserted"] == len(source_rows(conn)) - 2000
        assert target_rows(conn) == source_rows(conn)
        assert step(conn) == "copied"


def test_copy_refuses_duplicate_source_keys_and_changes_nothing(dsn: str, cli: Callable[..., Any]) -> None:
    with connect(dsn) as conn:
        # A production table that never had its primary key.
        conn.execute("ALTER TABLE market.derived_data_bars DROP CONSTRAINT derived_data_bars_pkey")
        conn.execute(f"INSERT INTO market.derived_data_bars SELECT * {DXY_SOURCE} ORDER BY ts LIMIT 2")
    result = cli("relocate", "dxy", "copy", dsn=dsn)
    assert result.exit_code == 1
    assert (
        "pre-flight for dxy_copy failed: dxy_source_duplicates (dxy_source_duplicates: 2 violation(s)"
        in result.output
    )
    assert "Traceback" not in result.output
    with connect(dsn) as conn:
        assert step(conn) == "installed"
        assert conn.execute(f"SELECT count(*) {DXY_TARGET}").fetchone() == (0,)


def test_copy_refuses_without_the_unique_index(new_db: Callable[..., str], cli: Callable[..., Any]) -> None:
    dsn = new_db("dxy_relocation")  # data_bars still in phase dual: no key identity index
    with connect(dsn) as conn:
        conn.execute(
            "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close)"
            " VALUES ('DXY', '1m', %s, 1, 1, 1, 1)",
            (START,),
        )
    result = cli("relocate", "dxy", "copy", dsn=dsn)
    assert result.exit_code == 1
    assert "pre-flight for dxy_copy failed: data_bars_unique_key" in result.output
    with connect(dsn) as conn:
        assert step(conn) == "installed"
        # The same guard holds in SQL, for a caller that skips the pre-flight.
        with pytest.raises(psycopg.Error, match="market.data_bars has no valid unique index over"):
            conn.execute("SELECT keyshift.relocation_copy_start__dxy_1m_bars('no pre-flight')")
        assert step(conn) == "installed"


# ---------------------------------------------------------------- write function


def test_write_function_writes_where_the_step_says(dsn: str) -> None:
    with connect(dsn) as conn:
        assert write_bar(conn, "2026-12-01 00:00:00+00") == "installed"
        assert conn.execute(f"SELECT count(*) {DXY_TARGET}").fetchone() == (0,)
    relocation.copy(dsn, "dxy", batch_size=2000)
    with connect(dsn) as conn:
        assert write_bar(conn, "2026-12-01 00:01:00+00") == "copied"
    relocation.switch(dsn, "dxy", "soak starts")
    with connect(dsn) as conn:
        # During the soak: both tables, and an update reaches both.
        assert write_bar(conn, "2026-12-01 00:02:00+00") == "switched"
        assert write_bar(conn, "2026-12-01 00:01:00+00", price=50.0) == "switched"
        both = "ts >= '2026-12-01' ORDER BY ts"
        src = conn.execute(f"SELECT {BAR} {DXY_SOURCE} AND {both}").fetchall()
        dst = conn.execute(f"SELECT {BAR} {DXY_TARGET} AND {both}").fetchall()
        assert src == dst and len(src) == 3 and src[1][1] == "50"
        assert reconciled(conn) == "pass"
    relocation.cleanup(dsn, "dxy", force=True, reason="test: soak skipped")
    with connect(dsn) as conn:
        assert write_bar(conn, "2026-12-01 00:03:00+00") == "cleaned"
        assert conn.execute(f"SELECT count(*) {DXY_TARGET} AND ts = '2026-12-01 00:03:00+00'").fetchone() == (
            1,
        )
        assert conn.execute(f"SELECT count(*) {DXY_SOURCE} AND ts = '2026-12-01 00:03:00+00'").fetchone() == (
            0,
        )


# ---------------------------------------------------------------- switch


def test_switch_is_atomic_for_a_concurrent_reader(dsn: str) -> None:
    relocation.copy(dsn, "dxy", batch_size=2000)
    with connect(dsn) as conn:
        n = len(source_rows(conn))
        # Before the switch the view hides the copied rows of data_bars.
        assert view_dxy(conn) == (n, n)
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def reader() -> None:
        with connect(dsn) as conn:
            while not stop.is_set():
                seen.append(view_dxy(conn))

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.3)
    result = relocation.switch(dsn, "dxy", "readers to data_bars")
    time.sleep(0.3)
    stop.set()
    thread.join()
    assert result["rows"] == n and result["step"] == "switched"
    assert len(seen) > 5 and set(seen) == {(n, n)}
    with connect(dsn) as conn:
        # The view now reads DXY from data_bars: a change made there alone shows.
        conn.execute(
            "UPDATE market.data_bars SET close = 999 WHERE instrument_key = 'DXY_ICE_INDEX' AND ts = %s",
            (START,),
        )
        assert conn.execute(
            "SELECT close::text FROM market.bars_1m WHERE symbol = 'DXY' AND ts = %s", (START,)
        ).fetchone() == ("999",)
        assert conn.execute("SELECT count(*) FROM market.bars_1m WHERE symbol = 'EURX'").fetchone() == (100,)
        audit = conn.execute(
            "SELECT old_value, new_value, reason FROM keyshift.audit_log WHERE subject = 'dxy_1m_bars' ORDER BY id"
        ).fetchall()
        assert audit[-1] == ("copied", "switched", "readers to data_bars")


def test_switch_refused_before_the_copy_and_when_a_day_differs(dsn: str, cli: Callable[..., Any]) -> None:
    with connect(dsn) as conn:
        before = conn.execute("SELECT pg_get_viewdef('market.bars_1m')").fetchone()
    result = cli("relocate", "dxy", "switch", "--reason", "too early", dsn=dsn)
    assert result.exit_code == 1 and "is at step installed" in result.output
    relocation.copy(dsn, "dxy", batch_size=5000)
    with connect(dsn) as conn:
        conn.execute(
            "DELETE FROM market.data_bars WHERE instrument_key = 'DXY_ICE_INDEX' AND ts = %s", (START,)
        )
    result = cli("relocate", "dxy", "switch", "--reason", "a day differs", dsn=dsn)
    assert result.exit_code == 1
    assert (
        "day 2026-11-01 has 1410 rows in market.derived_data_bars and 1409 in market.data_bars"
        in result.output
    )
    with connect(dsn) as conn:
        assert conn.execute("SELECT pg_get_viewdef('market.bars_1m')").fetchone() == before
        assert step(conn) == "copied"


# ---------------------------------------------------------------- cleanup


def test_cleanup_refused_inside_the_soak_window_and_without_a_passing_reconciliation(
    dsn: str, cli: Callable[..., Any]
) -> None:
    relocation.copy(dsn, "dxy", batch_size=5000)
    with connect(dsn) as conn:
        assert reconciled(conn) == "pass"  # before the switch: does not count
    relocation.switch(dsn, "dxy", "test switch")
    result = cli("relocate", "dxy", "cleanup", dsn=dsn)
    assert result.exit_code == 1 and "no reconciliation of pair dxy_1m_bars since the switch" in result.output
    with connect(dsn) as conn:
        assert reconciled(conn) == "pass"
    result = cli("relocate", "dxy", "cleanup", dsn=dsn)
    assert result.exit_code == 1
    assert "the soak window (24:00:00) ends at" in result.output and "from now" in result.output
    result = cli("relocate", "dxy", "cleanup", "--force", dsn=dsn)
    assert result.exit_code == 2 and "--force needs --reason" in result.output
    bar = "UPDATE market.data_bars SET close = %s WHERE instrument_key = 'DXY_ICE_INDEX' AND ts = %s"
    with connect(dsn) as conn:
        conn.execute(bar, (0, START))
        assert reconciled(conn) == "fail"
    result = cli("relocate", "dxy", "cleanup", "--force", "--reason", "in a hurry", dsn=dsn)
    assert result.exit_code == 1 and "failed: 1 of 3 buckets differ" in result.output
    with connect(dsn) as conn:
        assert step(conn) == "switched"
        assert conn.execute(f"SELECT count(relocated_at) {DXY_SOURCE}").fetchone() == (0,)
        conn.execute(bar, (100.5, START))
        assert reconciled(conn) == "pass"
    result = cli(
        "relocate", "dxy", "cleanup", "--force", "--reason", "soak cut short", "--batch-size", "1000", dsn=dsn
    )
    assert result.exit_code == 0, result.output
    with connect(dsn) as conn:
        assert step(conn) == "cleaned"
        n = len(source_rows(conn))
        assert conn.execute(f"SELECT count(relocated_at) {DXY_SOURCE}").fetchone() == (n,)
        assert conn.execute(
            "SELECT count(*) FROM market.derived_data_bars WHERE symbol = 'EURX' AND relocated_at IS NOT NULL"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT reason FROM keyshift.audit_log WHERE action = 'force_override' AND subject = 'dxy_1m_bars'"
        ).fetchall() == [("soak cut short",)]
        spec = conn.execute("SELECT spec FROM keyshift.reconcile_pairs WHERE name = 'dxy_1m_bars'").fetchone()
        assert spec is not None and "cleaned_at" in spec[0]


def test_cleanup_after_the_soak_window_needs_no_force(dsn: str) -> None:
    switched(dsn)
    with connect(dsn) as conn:
        conn.execute("SELECT keyshift.set_setting('dxy.soak_window', '0 seconds', 'test')")
        assert reconciled(conn) == "pass"
    result = relocation.cleanup(dsn, "dxy")
    assert result["forced"] is False and result["step"] == "cleaned"
    assert result["rows_marked"] == result["source_rows"] == result["source_marked"]


# ---------------------------------------------------------------- purge


def cleaned(dsn: str) -> None:
    switched(dsn)
    with connect(dsn) as conn:
        assert reconciled(conn) == "pass"
    relocation.cleanup(dsn, "dxy", force=True, reason="test")


def all_keys(conn: psycopg.Connection[Any]) -> set[Any]:
    rows = conn.execute(f"SELECT ts {DXY_SOURCE} UNION SELECT ts {DXY_TARGET}").fetchall()
    return {r[0] for r in rows}


def test_purge_killed_mid_batch_leaves_every_bar_somewhere(dsn: str) -> None:
    cleaned(dsn)
    with connect(dsn) as conn:
        keys = all_keys(conn)
        n = len(source_rows(conn))
        # A bar the target lost after cleanup: the purge must keep it (and say so).
        conn.execute(
            "DELETE FROM market.data_bars WHERE instrument_key = 'DXY_ICE_INDEX' AND ts = %s", (START,)
        )
        # A bar some legacy writer put in the old table after cleanup: not marked, not purged.
        conn.execute(
            "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close)"
            " VALUES ('DXY', '1m', '2026-12-05', 1, 1, 1, 1) RETURNING ts"
        )
        keys.add(conn.execute(f"SELECT max(ts) {DXY_SOURCE}").fetchone()[0])  # type: ignore[index]
    with connect(dsn) as blocker, connect(dsn) as admin:
        # The first batch deletes its rows, then waits to dead-letter the lost bar.
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE keyshift.dead_letters IN EXCLUSIVE MODE")
        kill_when_waiting(
            dsn, admin, "relocation_purge_batch", lambda: relocation.purge(dsn, "dxy", batch_size=1000)
        )
        blocker.execute("ROLLBACK")
        assert all_keys(admin) == keys
        assert admin.execute(f"SELECT count(*) {DXY_SOURCE}").fetchone() == (n + 1,)
        assert step(admin) == "purging"
    result = relocation.purge(dsn, "dxy", batch_size=1000)
    assert result["resumed"] is True and result["step"] == "purged"
    assert result["rows_deleted"] == n - 1 and result["rows_dead_lettered"] == 1
    with connect(dsn) as conn:
        assert all_keys(conn) == keys
        left = conn.execute(f"SELECT ts::text, relocated_at {DXY_SOURCE} ORDER BY ts").fetchall()
        assert left == [("2026-11-01 00:00:00+00", None), ("2026-12-05 00:00:00+00", None)]
        letter = conn.execute(
            "SELECT operation, reason FROM keyshift.dead_letters WHERE source = 'relocation.dxy_1m_bars'"
        ).fetchall()
        assert letter == [
            ("DELETE", "marked for purge but absent from market.data_bars: kept in the source, unmarked")
        ]
        assert conn.execute(
            "SELECT count(*) FROM market.derived_data_bars WHERE symbol = 'EURX'"
        ).fetchone() == (100,)
        spec = conn.execute("SELECT spec FROM keyshift.reconcile_pairs WHERE name = 'dxy_1m_bars'").fetchone()
        assert spec is not None and "purged_at" in spec[0]
    with pytest.raises(psycopg.Error, match="being or have been purged; no rollback"):
        relocation.rollback(dsn, "dxy", "too late")


# ---------------------------------------------------------------- rollback and downgrade


def test_rollback_after_cleanup_loses_no_bar(dsn: str, cli: Callable[..., Any]) -> None:
    cleaned(dsn)
    with connect(dsn) as conn:
        write_bar(conn, "2026-12-01 00:00:00+00", price=77.0)  # data_bars only, now
        expected = target_rows(conn)
    result = cli("relocate", "dxy", "rollback", "--reason", "bad aggregates", "--json", dsn=dsn)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["from_step"] == "cleaned" and out["rows_removed"] == len(expected)
    with connect(dsn) as conn:
        assert source_rows(conn) == expected
        assert conn.execute(f"SELECT count(relocated_at) {DXY_SOURCE}").fetchone() == (0,)
        assert conn.execute(f"SELECT count(*) {DXY_TARGET}").fetchone() == (0,)
        assert view_dxy(conn) == (len(expected), len(expected))
        assert write_bar(conn, "2026-12-01 00:01:00+00") == "rolled_back"
        assert conn.execute(f"SELECT count(*) {DXY_TARGET}").fetchone() == (0,)
    # The relocation can run again from the start.
    again = relocation.copy(dsn, "dxy", batch_size=5000)
    assert again["step"] == "copied" and again["target_rows"] == len(expected) + 1


def relocation_db(new_db: Callable[..., str]) -> tuple[str, Any]:
    """At dxy_relocation with data_bars moved to key_primary by hand (the contract revision, above
    it, would refuse to downgrade while DXY rows without a token are in data_bars); seeded."""
    dsn = new_db("index_memberships_dual_write")
    with connect(dsn) as conn:
        original = conn.execute("SELECT pg_get_viewdef('market.bars_1m')").fetchone()
    migrate.upgrade(dsn, "dxy_relocation")
    phases.change_phase(dsn, "market.data_bars", "key_primary", "test: make room for DXY")
    seed(dsn, minutes=600)
    return dsn, original


def test_downgrade_restores_the_view_and_keeps_every_bar(new_db: Callable[..., str]) -> None:
    dsn, original = relocation_db(new_db)
    switched(dsn)
    with connect(dsn) as conn:
        write_bar(conn, "2026-12-01 00:00:00+00")
        expected = source_rows(conn)
        assert conn.execute("SELECT pg_get_viewdef('market.bars_1m')").fetchone() != original
    migrate.downgrade(dsn, "index_memberships_dual_write")
    with connect(dsn) as conn:
        assert conn.execute("SELECT pg_get_viewdef('market.bars_1m')").fetchone() == original
        assert source_rows(conn) == expected
        assert conn.execute(
            "SELECT count(*) FROM market.data_bars WHERE instrument_token IS NULL"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'relocated_at'"
        ).fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('keyshift.relocations')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM instrument_registry.instruments WHERE instrument_key = 'DXY_ICE_INDEX'"
        ).fetchone() == (0,)


def test_downgrade_refused_after_purge(new_db: Callable[..., str]) -> None:
    dsn, _ = relocation_db(new_db)
    cleaned(dsn)
    relocation.purge(dsn, "dxy")
    with pytest.raises(Exception, match="its source rows are purged"):
        migrate.downgrade(dsn, "index_memberships_dual_write")
    with connect(dsn) as conn:
        assert step(conn) == "purged"
        assert conn.execute(f"SELECT count(*) {DXY_TARGET}").fetchone() == (600 - 30,)


# ---------------------------------------------------------------- health, status, CLI


def test_health_and_status(dsn: str, cli: Callable[..., Any]) -> None:
    result = cli("relocate", "dxy", "health", "--json", dsn=dsn)
    assert result.exit_code == 1  # the seeded bars are a month old
    checks = {c["check"]: c["ok"] for c in json.loads(result.output)["checks"]}
    assert checks == {
        "newest_1m_bar": False,
        "aggregate_5m_advances": False,
        "aggregate_1h_advances": False,
        "no_duplicate_keys": True,
    }
    switched(dsn)
    with connect(dsn) as conn:
        now = conn.execute("SELECT date_trunc('minute', now())").fetchone()
        assert now is not None
        write_bar(conn, now[0].isoformat())
        for tf, back in (("5m", "4 minutes"), ("1h", "50 minutes")):
            conn.execute(
                "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close)"
                " VALUES ('DXY', %s, now() - %s::interval, 1, 1, 1, 1)",
                (tf, back),
            )
    result = cli("relocate", "dxy", "health", dsn=dsn)
    assert result.exit_code == 0, result.output
    result = cli("relocate", "dxy", "status", "--json", dsn=dsn)
    assert result.exit_code == 0
    status = json.loads(result.output)
    assert status["step"] == "switched" and status["copy"]["status"] == "done"
    assert 23 * 3600 < status["soak_left"] <= 24 * 3600
    assert status["last_health"]["status"] == "done"
    assert status["source_rows"] == status["target_rows"]
    text = cli("relocate", "dxy", "plan", dsn=dsn)
    assert text.exit_code == 0 and "step switched" in text.output and "next: health" in text.output


def test_cli_bad_input_is_one_line_exit_2(dsn: str, cli: Callable[..., Any]) -> None:
    result = cli("relocate", "dxy", "copy", "--batch-size", "0", dsn=dsn)
    assert result.exit_code == 2
    result = cli("relocate", "dxy", "status", dsn="host=127.0.0.1 port=1 dbname=nope connect_timeout=2")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "cannot connect" in result.output


# ---------------------------------------------------------------- the templates, generic


HOSTILE_SCHEMA = 'we"ird'


def test_the_relocation_templates_work_with_hostile_names(new_db: Callable[..., str]) -> None:
    """The same templates for another slice: odd identifiers, a non-default schema, a text slice value
    with a quote; copy, write, switch and rollback run on a real server."""
    dsn = new_db("control_schema")
    q = 'CREATE SCHEMA "we""ird";'
    q += ' CREATE TABLE "we""ird"."Old Bars" ("Sym" text, tf text, "t s" timestamptz, "va\'l" numeric,'
    q += ' PRIMARY KEY ("Sym", tf, "t s"));'
    q += ' CREATE TABLE "we""ird"."new-bars" (k text, tf text, "t s" timestamptz, "va\'l" numeric,'
    q += ' PRIMARY KEY (k, tf, "t s"));'
    q += ' CREATE VIEW "we""ird"."Readers" AS SELECT "Sym", "t s", "va\'l" FROM "we""ird"."Old Bars";'
    q += " SELECT keyshift.define_setting('odd.soak_window', 'interval', '1 hour', 'test');"
    insert = "INSERT INTO \"we\"\"ird\".\"Old Bars\" SELECT 'O''Neil', '1m', %s::timestamptz + m * interval '1 hour', m"
    insert += " FROM generate_series(0, 99) m"
    common = dict(
        name="odd_slice",
        source_schema=HOSTILE_SCHEMA,
        source_table="Old Bars",
        source_slice={"Sym": "O'Neil", "tf": "1m"},
        target_schema=HOSTILE_SCHEMA,
        target_table="new-bars",
        target_slice={"k": "O'NEIL_X_INDEX", "tf": "1m"},
        cursor_column="t s",
        target_unique=["k", "tf", "t s"],
    )
    rendered = [
        render.render("relocation_control"),
        render.render(
            "relocation",
            carried_columns=["t s", "va'l"],
            marker_column="moved at",
            view_schema=HOSTILE_SCHEMA,
            view_name="Readers",
            reader_before='SELECT "Sym", "t s", "va\'l" FROM "we""ird"."Old Bars"',
            reader_after='SELECT \'O\'\'Neil\'::text AS "Sym", "t s", "va\'l" FROM "we""ird"."new-bars"'
            " WHERE k = 'O''NEIL_X_INDEX'",
            soak_setting="odd.soak_window",
            pair_spec=json.dumps({"source": f"{HOSTILE_SCHEMA}.Old Bars"}),
            pair_description="odd",
            registered_by="test",
            **common,
        ),
        render.render(
            "relocation_write",
            function_schema=HOSTILE_SCHEMA,
            function_name="Write Bar",
            arguments=[["t s", "timestamptz"], ["va'l", "numeric"]],
            defaults={},
            source_stamp=None,
            description="odd writer",
            **common,
        ),
    ]

    def call(conn: psycopg.Connection[Any], kind: str, *args: Any) -> tuple[Any, ...] | None:
        query = sql.SQL("SELECT * FROM keyshift.{}({})").format(
            sql.Identifier(f"relocation_{kind}__odd_slice"),
            sql.SQL(", ").join([sql.Placeholder()] * len(args)),
        )
        return conn.execute(query, args).fetchone()

    with connect(dsn) as conn:
        conn.execute(q.encode())
        conn.execute(insert.encode(), (START,))
        for text in rendered:
            conn.execute(text.encode())
        assert call(conn, "copy_start", "go") == ("started",)
        done = False
        while not done:
            row = call(conn, "copy_batch", 30)
            assert row is not None
            done, mismatched = row[3], row[5]
            assert mismatched == 0
        assert conn.execute(
            'SELECT "we""ird"."Write Bar"(%s::timestamptz, 7)', ("2026-12-01",)
        ).fetchone() == ("copied",)
        moved = 'SELECT "t s", "va\'l" FROM "we""ird"."new-bars" ORDER BY 1'
        kept = 'SELECT "t s", "va\'l" FROM "we""ird"."Old Bars" ORDER BY 1'
        assert conn.execute(moved).fetchall() == conn.execute(kept).fetchall()
        assert len(conn.execute(moved).fetchall()) == 101
        assert call(conn, "switch", "switch") == (101,)
        readers = conn.execute('SELECT "Sym", count(*) FROM "we""ird"."Readers" GROUP BY 1').fetchall()
        assert readers == [("O'Neil", 101)]
        assert call(conn, "rollback", "back") == (0, 0, 101, "switched")
        assert conn.execute('SELECT count(*) FROM "we""ird"."new-bars"').fetchone() == (0,)
        assert conn.execute('SELECT count(*) FROM "we""ird"."Readers"').fetchone() == (101,)
