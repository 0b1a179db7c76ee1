"""Backfill: fills keys in batches, resumes after a kill, holds up under concurrent writes."""

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

from tests.legacy import legacy_bars, make_legacy_db
from toolkit import backfill, dlq
from toolkit.errors import KeyshiftError

TABLE = "market.data_bars"


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def batches_done(dsn: str) -> int:
    with connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM keyshift.backfill_batches WHERE outcome = 'ok'").fetchone()
    assert row is not None
    return int(row[0])


def table_state(dsn: str) -> tuple[Any, ...]:
    """Everything that matters about the table's content, order-independent."""
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(instrument_key),"
            " md5(string_agg(instrument_token || '|' || timeframe || '|' || ts || '|'"
            "     || coalesce(instrument_key, '-'), ',' ORDER BY instrument_token, timeframe, ts))"
            " FROM market.data_bars"
        ).fetchone()
        letters = conn.execute(
            "SELECT count(*) FROM keyshift.dead_letters WHERE resolved_at IS NULL"
        ).fetchone()
    assert row is not None and letters is not None
    return (*row, letters[0])


def set_setting(dsn: str, key: str, value: str) -> None:
    with connect(dsn) as conn:
        conn.execute("SELECT keyshift.set_setting(%s, %s, 'test')", (key, value))


@pytest.fixture
def legacy(new_db: Callable[..., str]) -> str:
    dsn = make_legacy_db(new_db, minutes=400)
    with connect(dsn) as conn:
        # Rows of a token the registry does not know: they must end as dead letters.
        conn.execute("ALTER TABLE market.data_bars DISABLE TRIGGER keyshift_key_sync")
        legacy_bars(conn, (555,), minutes=3)
        conn.execute("ALTER TABLE market.data_bars ENABLE TRIGGER keyshift_key_sync")
        conn.execute("ANALYZE market.data_bars")
    return dsn


def test_backfill_resolves_history_by_time_and_dead_letters_the_unmapped(legacy: str) -> None:
    result = backfill.run(legacy, TABLE, batch_rows=100)
    assert result.status == "done"
    assert (result.rows_updated, result.rows_dead_lettered) == (1200, 3)
    assert result.batches > 3  # small batches were asked for
    with connect(legacy) as conn:
        by_key = dict(
            conn.execute(
                "SELECT coalesce(instrument_key, '-'), count(*) FROM market.data_bars GROUP BY 1"
            ).fetchall()
        )
        # Token 101 bars run from 22:00 on 2025-12-31: 120 minutes are AAA's, the rest BBB's.
        assert by_key == {
            "AAA_NSE_EQUITY": 120,
            "BBB_NSE_EQUITY": 280,
            "M&M_NSE_EQUITY": 400,
            "NIFTY24JANFUT_NFO_FUTURE": 400,
            "-": 3,
        }
        letters = conn.execute(
            "SELECT operation, row_identity->>'instrument_token', reason FROM keyshift.dead_letters"
        ).fetchall()
        assert len(letters) == 3
        assert all(
            op == "BACKFILL" and token == "555" and "no instrument_key" in reason
            for op, token, reason in letters
        )
        state = conn.execute(
            "SELECT status, rows_updated, rows_dead_lettered, finished_at IS NOT NULL"
            " FROM keyshift.backfill_state WHERE table_name = 'data_bars'"
        ).fetchone()
        assert state == ("done", 1200, 3, True)
        outcomes = conn.execute(
            "SELECT outcome, count(*), sum(rows_updated) FROM keyshift.backfill_batches GROUP BY 1"
        ).fetchall()
        assert outcomes == [("ok", result.batches, 1200)]
    before = table_state(legacy)
    again = backfill.run(legacy, TABLE)
    assert (again.rows_updated, again.rows_dead_lettered) == (0, 3)
    assert table_state(legacy) == before  # idempotent: letters refreshed, not repeated


def test_killed_client_resumes_to_the_same_state(legacy: str, new_db: Callable[..., str]) -> None:
    reference = make_legacy_db(new_db, minutes=400)
    with connect(reference) as conn:
        conn.execute("ALTER TABLE market.data_bars DISABLE TRIGGER keyshift_key_sync")
        legacy_bars(conn, (555,), minutes=3)
        conn.execute("ALTER TABLE market.data_bars ENABLE TRIGGER keyshift_key_sync")
    backfill.run(reference, TABLE)

    set_setting(legacy, "backfill.pause_ms", "150")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    kills = 0
    rng = random.Random(7)
    for _ in range(3):
        before = batches_done(legacy)
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolkit", "backfill", TABLE, "--batch-size", "30", "--dsn", legacy],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill at a random point once this run has committed a batch (start-up time varies with load).
        deadline = time.monotonic() + 60
        while batches_done(legacy) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 3
    with connect(legacy) as conn:
        (checkpoint,) = conn.execute(
            "SELECT (last_key->>'block')::int FROM keyshift.backfill_state WHERE table_name = 'data_bars'"
        ).fetchone()
    assert checkpoint > 0  # the killed runs made (and kept) progress
    set_setting(legacy, "backfill.pause_ms", "0")
    result = backfill.run(legacy, TABLE)
    assert result.status == "done"
    assert table_state(legacy) == table_state(reference)


def test_concurrent_inserts_updates_and_deletes_leave_no_null_or_inconsistent_key(legacy: str) -> None:
    stop = threading.Event()
    committed: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with connect(legacy) as conn:
                minute = 0
                while not stop.is_set():
                    minute += 1
                    conn.execute(
                        "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
                        " VALUES (101, '1m', '2026-03-01'::timestamptz + %s * interval '1 minute', 1, 1, 1, 1)",
                        (minute,),
                    )
                    committed.append(minute)
                    conn.execute(
                        "UPDATE market.data_bars SET volume = volume + 1 WHERE instrument_token = 102"
                        " AND ts = '2025-12-31 22:00+00'::timestamptz + %s * interval '1 minute'",
                        (minute % 400,),
                    )
                    conn.execute(
                        "DELETE FROM market.data_bars WHERE instrument_token = 103"
                        " AND ts = '2025-12-31 22:00+00'::timestamptz + %s * interval '1 minute'",
                        (minute % 50,),
                    )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = backfill.run(legacy, TABLE, batch_rows=50)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert result.status == "done" and committed
    with connect(legacy) as conn:
        readiness = conn.execute(
            "SELECT null_keys, inconsistent FROM keyshift.key_readiness('market', 'data_bars')"
        ).fetchone()
        assert readiness == (3, 0)  # only the 3 unmapped (dead-lettered) rows lack a key
        present = conn.execute(
            "SELECT count(*) FROM market.data_bars WHERE instrument_token = 101"
            " AND ts >= '2026-03-01' AND instrument_key = 'BBB_NSE_EQUITY'"
        ).fetchone()
        assert present == (len(committed),)  # every committed write is there, with its key


def test_refuses_a_table_not_in_dual(legacy: str) -> None:
    with connect(legacy) as conn:
        conn.execute(
            "UPDATE keyshift.migrated_tables SET phase = 'token_only' WHERE table_name = 'data_bars'"
        )
    with pytest.raises(
        KeyshiftError, match="is in phase token_only: the backfill runs only in phase dual"
    ) as info:
        backfill.run(legacy, TABLE)
    assert info.value.exit_code == 2


def test_a_second_backfill_of_the_same_table_is_refused(legacy: str) -> None:
    with connect(legacy) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(hashtext('keyshift.backfill'), hashtext('\"market\".\"data_bars\"'))"
        )
        with pytest.raises(KeyshiftError, match="another backfill of market.data_bars is running"):
            backfill.run(legacy, TABLE)


def test_lock_timeout_is_retried_with_backoff_then_succeeds(legacy: str) -> None:
    set_setting(legacy, "backfill.lock_timeout", "100ms")
    holder = connect(legacy)
    holder.execute("BEGIN")
    holder.execute("SELECT 1 FROM market.data_bars WHERE instrument_token = 102 FOR UPDATE")
    timer = threading.Timer(1.5, holder.rollback)
    timer.start()
    try:
        result = backfill.run(legacy, TABLE)
    finally:
        timer.join()
        holder.close()
    assert result.status == "done" and result.retries >= 1
    assert result.rows_updated == 1200
    with connect(legacy) as conn:
        (timeouts,) = conn.execute(
            "SELECT count(*) FROM keyshift.backfill_batches WHERE outcome = 'lock_timeout'"
        ).fetchone()
    assert timeouts == result.retries


def test_statement_timeout_splits_the_batch_then_stops_with_a_clear_error(legacy: str) -> None:
    set_setting(legacy, "backfill.statement_timeout", "1ms")
    set_setting(legacy, "backfill.max_retries", "3")
    with pytest.raises(
        KeyshiftError, match="stopped at block 0: 3 retries of one batch failed \\(statement_timeout\\)"
    ):
        backfill.run(legacy, TABLE, batch_rows=1000)
    with connect(legacy) as conn:
        sizes = [
            r[0]
            for r in conn.execute(
                "SELECT batch_size FROM keyshift.backfill_batches WHERE outcome = 'statement_timeout' ORDER BY id"
            )
        ]
        status = conn.execute(
            "SELECT status FROM keyshift.backfill_state WHERE table_name = 'data_bars'"
        ).fetchone()
    assert len(sizes) == 4 and all(b < a for a, b in zip(sizes, sizes[1:], strict=False))  # halved each time
    assert status == ("failed",)
    set_setting(legacy, "backfill.statement_timeout", "30s")
    assert backfill.run(legacy, TABLE).status == "done"  # resumes from the checkpoint


def test_backs_off_while_sessions_wait_for_the_table(legacy: str) -> None:
    first = connect(legacy)
    first.execute("BEGIN")
    first.execute("LOCK TABLE market.data_bars IN SHARE MODE")
    second = connect(legacy)
    waiter = threading.Thread(target=_lock_and_release, args=(second,))
    waiter.start()
    time.sleep(0.3)
    notes: list[str] = []
    try:
        result = backfill.run(legacy, TABLE, max_runtime_s=1.5, progress=lambda p: notes.append(p.note))
    finally:
        first.rollback()
        waiter.join()
        first.close()
        second.close()
    assert result.status == "paused" and result.batches == 0
    assert notes and all('waiting for a lock on "market"."data_bars"' in n for n in notes)


def _lock_and_release(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("LOCK TABLE market.data_bars IN EXCLUSIVE MODE")


def test_cli_final_line_and_refusal(cli: Callable, legacy: str) -> None:  # type: ignore[type-arg]
    result = cli("backfill", TABLE, dsn=legacy)
    assert result.exit_code == 0, result.stderr
    assert "market.data_bars: done; 1,200 rows updated, 3 dead-lettered" in result.stdout
    neither = cli("backfill", dsn=legacy)
    assert neither.exit_code == 2 and "name one TABLE" in neither.stderr
    unknown = cli("backfill", "market.nope", dsn=legacy)
    assert unknown.exit_code == 2 and "market.nope is not under migration" in unknown.stderr


def test_dead_letters_of_a_token_table_apply_once_the_token_is_mapped(legacy: str) -> None:
    backfill.run(legacy, TABLE)
    # Not mapped yet: the retry fails and says why.
    outcomes = dlq.retry(legacy, retry_all=True)
    assert len(outcomes) == 3 and all(
        "still no instrument_key for instrument_token 555" in o["outcome"] for o in outcomes
    )
    with connect(legacy) as conn:
        conn.execute(
            "INSERT INTO instrument_registry.instruments VALUES ('ZZZ_NSE_EQUITY', 'ZZZ', 'NSE', 'EQUITY')"
        )
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens (broker, instrument_token, instrument_key)"
            " VALUES ('zerodha', 555, 'ZZZ_NSE_EQUITY')"
        )
    assert [o["outcome"] for o in dlq.retry(legacy, retry_all=True)] == ["applied"] * 3
    with connect(legacy) as conn:
        assert conn.execute(
            "SELECT count(*) FROM market.data_bars WHERE instrument_token = 555 AND instrument_key = 'ZZZ_NSE_EQUITY'"
        ).fetchone() == (3,)
        assert conn.execute(
            "SELECT count(*) FROM keyshift.dead_letters WHERE resolved_at IS NULL"
        ).fetchone() == (0,)
