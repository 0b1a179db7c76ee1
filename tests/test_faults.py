"""Faults during a cutover: killed clients, killed server sessions, busy locks, a full downgrade.

Each test injects the fault into a real run and then checks the one thing
that matters: nothing is lost and a rerun finishes the job.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from alembic import command
from psycopg import sql

from tests.conftest import schema_dump
from tests.legacy import legacy_bars, seed_registry
from tests.load import BarWriter, Load, Writer, connect, expand_revision, report
from toolkit import backfill, memberships, migrate

pytestmark = pytest.mark.faults

TABLE = "market.data_bars"
LEGACY_TABLES = (
    "market.instrument_metadata",
    "market.subscriptions",
    "market.data_bars",
    "market.derived_data_bars",
    "trading.positions",
    "screener.index_memberships",
)


def keyshift(*args: str) -> subprocess.Popen[str]:
    """`python -m toolkit ARGS` in a child process (a client that can be killed)."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        [sys.executable, "-m", "toolkit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scalar(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def legacy_db(new_db: Callable[..., str], minutes: int) -> str:
    """Registry seeded, legacy bars (and 3 of an unmapped token), at the expand revision."""
    dsn = new_db("instrument_registry")
    with connect(dsn) as conn:
        seed_registry(conn)
        legacy_bars(conn, minutes=minutes)
        legacy_bars(conn, (555,), minutes=3)
        conn.execute("ANALYZE")
    migrate.upgrade(dsn, expand_revision())
    return dsn


def history_state(dsn: str) -> tuple[Any, ...]:
    """The legacy bars (before the writers' range) with their keys, and the open dead letters."""
    return (
        scalar(
            dsn,
            "SELECT md5(string_agg(instrument_token || '|' || ts || '|' || volume || '|'"
            " || coalesce(instrument_key, '-'), ',' ORDER BY instrument_token, ts))"
            " FROM market.data_bars WHERE ts < '2026-06-01'",
        ),
        scalar(dsn, "SELECT count(*) FROM keyshift.dead_letters WHERE resolved_at IS NULL"),
    )


def accounting(dsn: str) -> tuple[int, int]:
    """(rows the checkpoint says were updated, rows the committed batches updated): must agree."""
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT s.rows_updated, (SELECT coalesce(sum(rows_updated), 0) FROM keyshift.backfill_batches"
            " WHERE outcome = 'ok') FROM keyshift.backfill_state s WHERE table_name = 'data_bars'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_backfill_sigkilled_at_random_points_under_writes_resumes_to_the_same_state(
    new_db: Callable[..., str],
) -> None:
    reference = legacy_db(new_db, minutes=3000)
    assert backfill.run(reference, TABLE, batch_rows=200).status == "done"
    dsn = legacy_db(new_db, minutes=3000)
    rng = random.Random(20261202)
    bars = [BarWriter(w) for w in range(2)]
    load = Load([Writer(dsn, bar, 20.0) for bar in bars])
    kills = 0
    with load:
        for _ in range(4):
            spawned = scalar(dsn, "SELECT clock_timestamp()")
            proc = keyshift("backfill", TABLE, "--batch-size", "200", "--dsn", dsn)
            # Wait until this client runs its first batch (the backend of a killed one may
            # linger), then kill it at a random point: between batches or inside one.
            deadline = time.monotonic() + 60
            while (
                proc.poll() is None
                and time.monotonic() < deadline
                and not scalar(
                    dsn,
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%backfill\\_\\_market%%'"
                    " AND pid <> pg_backend_pid() AND backend_start > %s",
                    (spawned,),
                )
            ):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate()
        progress = scalar(
            dsn,
            "SELECT (last_key->>'block')::int FROM keyshift.backfill_state WHERE table_name = 'data_bars'",
        )
        result = backfill.run(dsn, TABLE)  # resumed, while the writers still write
    load.check()
    assert kills >= 3 and progress > 0
    assert result.status == "done"
    assert history_state(dsn) == history_state(reference)
    updated, in_batches = accounting(dsn)
    assert updated == in_batches == 9000  # every legacy row updated once: no batch lost or counted twice
    with connect(dsn) as conn:
        assert scalar(dsn, "SELECT null_keys FROM keyshift.key_readiness('market', 'data_bars')") == 3
        assert scalar(dsn, "SELECT inconsistent FROM keyshift.key_readiness('market', 'data_bars')") == 0
        lost = sum(bar.missing(conn) for bar in bars)
    assert lost == 0
    report(
        f"backfill of market.data_bars, client SIGKILLed {kills} times then resumed",
        load,
        f"{kills} x SIGKILL",
        lost,
    )


def slow_trigger(conn: psycopg.Connection[Any], table: str, when: str, seconds: float) -> None:
    """A row trigger that sleeps: it holds a batch open long enough to be hit."""
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION public.slow_down() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep({}); RETURN NEW; END $$"
        ).format(sql.Literal(seconds))
    )
    schema, name = table.split(".")
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER slow_down {} ON {}.{} FOR EACH ROW EXECUTE FUNCTION public.slow_down()"
        ).format(sql.SQL(when), sql.Identifier(schema), sql.Identifier(name))
    )


def drop_slow_trigger(conn: psycopg.Connection[Any], table: str) -> None:
    schema, name = table.split(".")
    conn.execute(
        sql.SQL("DROP TRIGGER slow_down ON {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    )
    conn.execute("DROP FUNCTION public.slow_down()")


def terminate_when_running(dsn: str, pattern: str, killed: list[int]) -> threading.Thread:
    """A thread that pg_terminate_backend()s the first active session whose query matches."""

    def run() -> None:
        deadline = time.monotonic() + 60
        with connect(dsn) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
                    " AND query LIKE %s AND pid <> pg_backend_pid()",
                    (pattern,),
                ).fetchone()
                if row:
                    time.sleep(0.1)  # inside the batch
                    conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    killed.append(row[0])
                    return
                time.sleep(0.01)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def assert_one_clean_line(proc: subprocess.Popen[str], out: str, err: str, expected: str) -> None:
    assert proc.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(expected), err


def test_backfill_session_terminated_mid_batch_errors_clearly_and_a_rerun_completes(
    new_db: Callable[..., str],
) -> None:
    reference = legacy_db(new_db, minutes=400)
    assert backfill.run(reference, TABLE).status == "done"
    dsn = legacy_db(new_db, minutes=400)
    with connect(dsn) as conn:
        slow_trigger(conn, TABLE, "BEFORE UPDATE", 0.002)
    killed: list[int] = []
    killer = terminate_when_running(dsn, "%backfill\\_\\_market\\_\\_data\\_bars%", killed)
    proc = keyshift("backfill", TABLE, "--batch-size", "200", "--dsn", dsn)
    out, err = proc.communicate(timeout=120)
    killer.join()
    assert killed
    assert_one_clean_line(
        proc, out, err, "keyshift: error: lost the database connection: terminating connection"
    )
    assert "57P01" in err
    updated, in_batches = accounting(dsn)
    assert updated == in_batches  # the terminated batch left no trace, not even in the counts
    with connect(dsn) as conn:
        drop_slow_trigger(conn, TABLE)
    assert backfill.run(dsn, TABLE).status == "done"
    assert history_state(dsn) == history_state(reference)
    assert accounting(dsn) == (1200, 1200)
    report("backfill session terminated by the server mid-batch, rerun", None, "1 x pg_terminate_backend", 0)


def test_memberships_sync_terminated_mid_batch_resumes_and_ends_in_step(
    new_db: Callable[..., str],
) -> None:
    dsn = new_db("key_columns")
    with connect(dsn) as conn:
        seed_registry(conn)
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
            " SELECT 'BASE', t, 0.5, date '2020-01-01' + d FROM unnest(ARRAY[101, 102, 103]) t,"
            " generate_series(0, 299) d"
        )
    migrate.upgrade(dsn, "index_memberships_dual_write")
    with connect(dsn) as conn:
        # The trigger copied nothing yet: these rows predate it. Slow the copy down.
        slow_trigger(conn, "instrument_registry.index_memberships", "BEFORE INSERT", 0.002)
    killed: list[int] = []
    killer = terminate_when_running(dsn, "%dual\\_write\\_sync\\_\\_memberships%", killed)
    proc = keyshift("memberships", "sync", "--batch-size", "100", "--dsn", dsn)
    out, err = proc.communicate(timeout=120)
    killer.join()
    assert killed
    assert_one_clean_line(proc, out, err, "keyshift: error: lost the database connection")
    with connect(dsn) as conn:
        copied = conn.execute("SELECT count(*) FROM instrument_registry.index_memberships").fetchone()
        assert copied is not None and copied[0] % 100 == 0  # whole batches only
        drop_slow_trigger(conn, "instrument_registry.index_memberships")
    result = memberships.sync(dsn, 100)
    assert result["resumed"] is True
    assert result["rows_applied"] == 900 - copied[0]  # resumed from the cursor, not from the start
    with connect(dsn) as conn:
        missing = conn.execute(
            "SELECT count(*) FROM screener.index_memberships m WHERE NOT EXISTS (SELECT 1 FROM"
            " instrument_registry.index_memberships r WHERE r.index_name = m.index_name"
            " AND r.source_token = m.instrument_token AND r.effective_from = m.effective_from)"
        ).fetchone()
    assert missing == (0,) and result["registry_rows"] == 900
    report("memberships sync session terminated mid-batch, rerun", None, "1 x pg_terminate_backend", 0)


def alembic_config(dsn: str, lock_timeout: str) -> Any:
    cfg = migrate.config(dsn)
    cfg.cmd_opts = type("Opts", (), {"x": [f"lock_timeout={lock_timeout}"]})()
    return cfg


def version(dsn: str) -> str:
    return str(scalar(dsn, "SELECT version_num FROM keyshift.alembic_version"))


def test_expand_blocked_by_a_lock_fails_after_lock_timeout_whole_then_succeeds(
    new_db: Callable[..., str],
) -> None:
    dsn = new_db("instrument_registry")
    with connect(dsn) as conn:
        seed_registry(conn)
        legacy_bars(conn, minutes=10)
    before = schema_dump(dsn)
    cfg = alembic_config(dsn, "300ms")
    with psycopg.connect(dsn) as holder:
        # A long reader of the last table key_columns alters: the two before it are already done
        # inside the revision's transaction when it stops.
        holder.execute("SELECT count(*) FROM trading.positions")
        started = time.monotonic()
        with pytest.raises(Exception, match="lock timeout"):
            command.upgrade(cfg, expand_revision())
        waited = time.monotonic() - started
        holder.rollback()
    assert waited < 10  # one lock_timeout, not a queue behind the reader
    assert version(dsn) == "instrument_registry"
    assert schema_dump(dsn) == before  # nothing half-applied: no key column on any table
    command.upgrade(cfg, expand_revision())
    assert version(dsn) == expand_revision()
    assert scalar(dsn, "SELECT count(instrument_key) FROM market.data_bars") == 0  # history: the backfill's
    with connect(dsn) as conn:
        conn.execute(
            "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
            " VALUES (102, '1m', now(), 1, 1, 1, 1)"
        )
    assert scalar(dsn, "SELECT count(instrument_key) FROM market.data_bars") == 1  # the trigger works


def test_contract_blocked_by_a_lock_fails_after_lock_timeout_then_a_retry_finishes(
    new_db: Callable[..., str],
) -> None:
    dsn = legacy_db(new_db, minutes=20)
    with connect(dsn) as conn:
        conn.execute("DELETE FROM market.data_bars WHERE instrument_token = 555")
    for table in ("market.data_bars", "market.subscriptions", "trading.positions"):
        assert backfill.run(dsn, table).status == "done"
    cfg = alembic_config(dsn, "300ms")
    positions_before = schema_dump(dsn).split("CREATE TABLE trading.positions")[1].split(";")[0]
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT count(*) FROM trading.positions")
        with pytest.raises(Exception, match="lock timeout"):
            command.upgrade(cfg, "head")
        holder.rollback()
    assert version(dsn) == expand_revision()
    # The table whose lock was busy is untouched; the contract's statements can run again.
    assert schema_dump(dsn).split("CREATE TABLE trading.positions")[1].split(";")[0] == positions_before
    assert scalar(dsn, "SELECT phase FROM keyshift.migrated_tables WHERE table_name = 'positions'") == "dual"
    command.upgrade(cfg, "head")
    assert version(dsn) == "key_primary_contract"
    with connect(dsn) as conn:
        phases = {r[0] for r in conn.execute("SELECT phase FROM keyshift.migrated_tables")}
    assert phases == {"key_primary"}


def legacy_checksums(dsn: str, columns: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """Row count and md5 of every legacy table, over its legacy columns only, order-independent."""
    sums = {}
    with connect(dsn) as conn:
        for table, cols in columns.items():
            schema, name = table.split(".")
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), ''))"
                    " FROM (SELECT {} FROM {}.{}) r"
                ).format(
                    sql.SQL(", ").join(map(sql.Identifier, cols)),
                    sql.Identifier(schema),
                    sql.Identifier(name),
                )
            ).fetchone()
            assert row is not None
            sums[table] = (int(row[0]), str(row[1]))
    return sums


def test_downgrade_from_head_to_the_baseline_keeps_every_legacy_row_including_dual_phase_writes(
    new_db: Callable[..., str],
) -> None:
    dsn = new_db("legacy_baseline")
    with connect(dsn) as conn:
        legacy_bars(conn, minutes=300)
        conn.execute(
            "INSERT INTO market.instrument_metadata (instrument_token, tradingsymbol, exchange,"
            " instrument_type) VALUES (101, 'BBB', 'NSE', 'EQ'), (102, 'M&M', 'NSE', 'EQ')"
        )
        conn.execute(
            "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close)"
            " SELECT 'DXY', '1m', '2026-01-01'::timestamptz + m * interval '1 minute', 100, 101, 99, 100.5"
            " FROM generate_series(0, 99) m"
        )
        conn.execute(
            "INSERT INTO market.subscriptions (instrument_token, subscriber, created_at)"
            " VALUES (101, 'alice', '2025-06-01'), (102, 'bob', now())"
        )
        conn.execute(
            "INSERT INTO trading.positions (account_id, instrument_token, quantity, avg_price)"
            " VALUES ('acc1', 101, 10, 100.5), ('acc2', 103, -3, 7)"
        )
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
            " SELECT 'NIFTY50', t, 0.1, date '2025-01-01' + d FROM unnest(ARRAY[101, 102]) t,"
            " generate_series(0, 49) d"
        )
        columns = {
            t: [
                r[0]
                for r in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                    " AND NOT attisdropped ORDER BY attnum",
                    (t,),
                )
            ]
            for t in LEGACY_TABLES
        }
    legacy_schema = schema_dump(dsn)
    at_baseline = legacy_checksums(dsn, columns)

    migrate.upgrade(dsn, "instrument_registry")
    with connect(dsn) as conn:
        seed_registry(conn)
    migrate.upgrade(dsn, expand_revision())
    with connect(dsn) as conn:  # writes during the dual phase, the way legacy and new writers make them
        conn.execute("DELETE FROM market.data_bars WHERE instrument_token = 102 AND ts > '2026-01-01 01:00'")
        conn.execute(
            "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
            " VALUES (103, '1m', '2026-05-01', 3, 3, 3, 3)"
        )
        conn.execute(
            "INSERT INTO market.data_bars (instrument_key, timeframe, ts, open, high, low, close)"
            " VALUES ('M&M_NSE_EQUITY', '1m', '2026-05-01', 4, 4, 4, 4)"
        )  # key only
        conn.execute(
            "UPDATE market.data_bars SET volume = 777 WHERE instrument_token = 101 AND ts < '2026-01-01'"
        )
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
            " VALUES ('SENSEX', 103, 0.9, '2026-02-01')"
        )
        conn.execute("UPDATE trading.positions SET quantity = 11 WHERE account_id = 'acc1'")
    memberships.sync(dsn)
    for table in ("market.data_bars", "market.subscriptions", "trading.positions"):
        assert backfill.run(dsn, table).status == "done"
    migrate.upgrade(dsn, "head")
    with connect(dsn) as conn:  # and after the contract: a token-only write
        conn.execute(
            "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
            " VALUES (101, '1m', '2026-05-02', 5, 5, 5, 5)"
        )
    at_head = legacy_checksums(dsn, columns)
    assert at_head != at_baseline  # the dual phase wrote
    assert at_head["market.data_bars"][0] == 900 + 2 + 1 - 119  # 3 inserted, 119 deleted

    migrate.downgrade(dsn, "legacy_baseline")
    assert legacy_checksums(dsn, columns) == at_head
    assert schema_dump(dsn) == legacy_schema
    # The key-only row got its token in the dual phase and kept it.
    assert (
        scalar(
            dsn, "SELECT count(*) FROM market.data_bars WHERE instrument_token = 102 AND ts = '2026-05-01'"
        )
        == 1
    )
    report("upgrade to head with dual-phase writes, downgrade to legacy_baseline", None, "full downgrade", 0)


def test_retention_client_sigkilled_mid_batch_never_leaves_a_row_in_neither_place(
    new_db: Callable[..., str],
) -> None:
    dsn = new_db("index_memberships_dual_write")
    with connect(dsn) as conn:
        seed_registry(conn)
        conn.execute("SELECT keyshift.set_setting('memberships.retention_days', '30', 'test')")
        conn.execute("SELECT keyshift.set_setting('memberships.batch_size', '20', 'test')")
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from,"
            " effective_to) SELECT 'OLD', t, 0.1, date '2020-01-01' + d, date '2020-01-01' + d + 10"
            " FROM unnest(ARRAY[101, 102, 103]) t, generate_series(0, 59) d"
        )
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
            " SELECT 'LIVE', t, 0.2, current_date - 5 FROM unnest(ARRAY[101, 102, 103]) t"
        )
        slow_trigger(conn, "instrument_registry.index_memberships_archive", "BEFORE INSERT", 0.005)
    identity = (
        "SELECT index_name, instrument_key, effective_from FROM instrument_registry.index_memberships"
        " UNION ALL SELECT index_name, instrument_key, effective_from"
        " FROM instrument_registry.index_memberships_archive ORDER BY 1, 2, 3"
    )
    with connect(dsn) as conn:
        everything = conn.execute(identity).fetchall()
    assert len(everything) == 183
    rng = random.Random(9)
    kills = 0
    for _ in range(3):
        archived = scalar(dsn, "SELECT count(*) FROM instrument_registry.index_memberships_archive")
        proc = keyshift("retention", "run", "memberships", "--dsn", dsn)
        # Kill at a random point once this run has committed a batch (start-up time varies with load).
        deadline = time.monotonic() + 60
        while (
            proc.poll() is None
            and time.monotonic() < deadline
            and scalar(dsn, "SELECT count(*) FROM instrument_registry.index_memberships_archive") == archived
        ):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
        time.sleep(0.2)  # the server notices the client is gone and rolls the open batch back
        with connect(dsn) as conn:
            # Each row is live or archived: none in neither place, none in both.
            assert conn.execute(identity).fetchall() == everything
    assert kills >= 2
    with connect(dsn) as conn:
        drop_slow_trigger(conn, "instrument_registry.index_memberships_archive")
    moved = memberships.retention(dsn)
    with connect(dsn) as conn:
        assert conn.execute(identity).fetchall() == everything
        assert scalar(dsn, "SELECT count(*) FROM instrument_registry.index_memberships") == 3
        assert scalar(dsn, "SELECT count(*) FROM instrument_registry.index_memberships_archive") == 180
    assert moved["rows_moved"] < 180  # the killed runs had moved some, whole batches at a time
    report(
        f"memberships retention, client SIGKILLed {kills} times mid-batch then rerun",
        None,
        f"{kills} x SIGKILL",
        0,
    )
