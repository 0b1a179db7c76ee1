"""A cutover under load: writers keep inserting, updating and deleting for the whole run.

token -> key of market.data_bars: expand (every revision but the contract),
backfill, `keyshift phase ... key_primary`, contract (alembic upgrade head);
then zero NULL keys, zero inconsistent pairs, every committed write present,
and no writer waited longer than the revision's lock_timeout plus one batch.
The same for the memberships dual-write while `keyshift memberships sync` runs.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.legacy import legacy_bars, seed_registry
from tests.load import (
    DXY_START,
    BarWriter,
    DxyWriter,
    Load,
    MembershipWriter,
    Writer,
    connect,
    dxy_bars,
    expand_revision,
    report,
)
from toolkit import migrate

pytestmark = pytest.mark.faults

TABLES = ("market.data_bars", "market.subscriptions", "trading.positions")
REVISION_LOCK_TIMEOUT_S = float(migrate.DEFAULT_LOCK_TIMEOUT.removesuffix("s"))
WRITERS = 3
RATE = 20.0  # operations per second per writer


def readiness(conn: psycopg.Connection[Any], table: str) -> tuple[int, int]:
    schema, name = table.split(".")
    row = conn.execute(
        "SELECT null_keys, inconsistent FROM keyshift.key_readiness(%s, %s)", (schema, name)
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_token_to_key_cutover_under_steady_writes(
    new_db: Callable[..., str],
    cli: Callable,  # type: ignore[type-arg]
) -> None:
    dsn = new_db("instrument_registry")
    with connect(dsn) as conn:
        seed_registry(conn)
        legacy_bars(conn, minutes=4000)  # 12,000 legacy bars without a key
        conn.execute(
            "INSERT INTO market.subscriptions (instrument_token, subscriber, created_at)"
            " VALUES (101, 'alice', '2025-06-01'), (102, 'carol', now())"
        )
        conn.execute(
            "INSERT INTO trading.positions (account_id, instrument_token, quantity, avg_price, updated_at)"
            " VALUES ('acc1', 101, 10, 100.5, '2025-06-01')"
        )
        conn.execute("ANALYZE")
    bars = [BarWriter(w) for w in range(WRITERS)]
    load = Load([Writer(dsn, bar, RATE) for bar in bars])
    during: dict[str, int] = {}
    with load:
        ops = load.ops
        migrate.upgrade(dsn, expand_revision())  # expand, while the writers write
        during["expand"], ops = load.ops - ops, load.ops
        with connect(dsn) as conn:
            conn.execute("SELECT keyshift.set_setting('backfill.target_batch_ms', '50', 'load test')")
            conn.execute("SELECT keyshift.set_setting('backfill.pause_ms', '20', 'load test')")
        filled = cli("backfill", "--all", "--batch-size", "300", dsn=dsn)
        assert filled.exit_code == 0, filled.stderr
        assert filled.stdout.count(": done;") == 3
        during["backfill"], ops = load.ops - ops, load.ops
        moved = cli("phase", "market.data_bars", "key_primary", "--reason", "load test", dsn=dsn)
        assert moved.exit_code == 0, moved.stderr
        during["phase"], ops = load.ops - ops, load.ops
        migrate.upgrade(dsn, "head")  # contract, while the writers write
        # Keep writing a while after the contract: token-only writes still land.
        for w in load.writers:
            target = w.ops + 20
            while w.ops < target and not w.errors:
                w.stop.wait(0.05)
    load.check()
    with connect(dsn) as conn:
        for table in TABLES:
            assert readiness(conn, table) == (0, 0), table
        phases = dict(
            conn.execute("SELECT table_schema || '.' || table_name, phase FROM keyshift.migrated_tables")
        )
        assert phases == {t: "key_primary" for t in TABLES}
        (version,) = conn.execute("SELECT version_num FROM keyshift.alembic_version").fetchone()  # type: ignore[misc]
        assert version == "key_primary_contract"
        lost = sum(bar.missing(conn) for bar in bars)
        (max_batch_ms,) = conn.execute(
            "SELECT coalesce(max(duration_ms), 0) FROM keyshift.backfill_batches"
        ).fetchone()  # type: ignore[misc]
        (letters,) = conn.execute("SELECT count(*) FROM keyshift.dead_letters").fetchone()  # type: ignore[misc]
    assert lost == 0
    assert letters == 0
    # The writers really wrote through the backfill and the phase move.
    assert during["backfill"] > 20 and during["phase"] > 0, during
    assert load.max_wait <= REVISION_LOCK_TIMEOUT_S + float(max_batch_ms) / 1000, load.max_wait
    report(
        "token -> key cutover of market.data_bars (expand, backfill, key_primary, contract)",
        load,
        "none",
        lost,
    )


def registry_as_legacy(conn: psycopg.Connection[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(registry rows, legacy rows mapped the way the registry should hold them)."""
    registry = conn.execute(
        "SELECT index_name, instrument_key, weight::text, effective_from, effective_to, source_token"
        " FROM instrument_registry.index_memberships ORDER BY 1, 2, 4"
    ).fetchall()
    legacy = conn.execute(
        "SELECT m.index_name, instrument_registry.resolve_key('zerodha', m.instrument_token,"
        " m.effective_from::timestamp AT TIME ZONE 'UTC'), m.weight::text, m.effective_from, m.effective_to,"
        " m.instrument_token FROM screener.index_memberships m ORDER BY 1, 2, 4"
    ).fetchall()
    return registry, legacy


def test_memberships_dual_write_and_sync_under_steady_writes(
    new_db: Callable[..., str],
    cli: Callable,  # type: ignore[type-arg]
) -> None:
    dsn = new_db("key_columns")
    with connect(dsn) as conn:
        seed_registry(conn)
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
            " SELECT 'BASE', t, 0.5, date '2020-01-01' + d FROM unnest(ARRAY[101, 102, 103]) t,"
            " generate_series(0, 999) d"
        )
    history = [("BASE", t, d) for t in (101, 102, 103) for d in range(1000)]
    members = [MembershipWriter(w, history[w::WRITERS]) for w in range(WRITERS)]
    load = Load([Writer(dsn, m, RATE) for m in members])
    with load:
        migrate.upgrade(dsn, "index_memberships_dual_write")  # the trigger arrives while they write
        ops = load.ops
        synced = cli("memberships", "sync", "--batch-size", "100", dsn=dsn)
        assert synced.exit_code == 0, synced.stderr
        during_sync = load.ops - ops
        for w in load.writers:
            target = w.ops + 20
            while w.ops < target and not w.errors:
                w.stop.wait(0.05)
    load.check()
    with connect(dsn) as conn:
        registry, legacy = registry_as_legacy(conn)
        lost = sum(m.missing(conn) for m in members)
        (letters,) = conn.execute("SELECT count(*) FROM keyshift.dead_letters").fetchone()  # type: ignore[misc]
    assert during_sync > 10, during_sync  # the sync ran under load
    assert len(legacy) > 3000
    assert registry == legacy  # in step: nothing missing, nothing extra, the last weight everywhere
    assert lost == 0 and letters == 0
    assert load.max_wait <= REVISION_LOCK_TIMEOUT_S + 1.0, load.max_wait  # 1 s: far above one 100-row batch
    report("memberships dual-write, revision applied and sync run under writes", load, "none", lost)


def dxy_minutes(conn: psycopg.Connection[Any], side: str) -> set[int]:
    return set(dxy_bars(conn, side))


def killed_then_finished(dsn: str, args: list[str], kills: int, seed: int, check: Callable[[], None]) -> int:
    """Run `keyshift ARGS` in a child, SIGKILL it at random points ``kills`` times (checking the
    invariant after each), then run it to the end. Returns the kills that hit a running client."""
    rng = random.Random(seed)
    hit = 0
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolkit", *args, "--dsn", dsn],
            env={**os.environ, "PYTHONPATH": os.getcwd()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.6, 1.2))  # start-up, then somewhere in the batches
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            hit += 1
        proc.wait()
        time.sleep(0.2)  # the server notices the client is gone and rolls its batch back
        check()
    done = subprocess.run(
        [sys.executable, "-m", "toolkit", *args, "--dsn", dsn],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    check()
    return hit


def test_dxy_relocation_under_bars_arriving_through_the_write_function_with_killed_clients(
    head_dsn: str,
    cli: Callable,  # type: ignore[type-arg]
) -> None:
    dsn = head_dsn
    history = 2 * 24 * 60
    with connect(dsn) as conn:
        seed_registry(conn)
        conn.execute(
            "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close, volume)"
            " SELECT 'DXY', '1m', %s::timestamptz + m * interval '1 minute', 100, 101, 99, 100.5, m"
            " FROM generate_series(0, %s - 1) m",
            (DXY_START, history),
        )
        conn.execute("SELECT keyshift.set_setting('dxy.batch_size', '100', 'load test')")
    dxy = [DxyWriter(w, history) for w in range(WRITERS)]
    load = Load([Writer(dsn, d, RATE) for d in dxy])
    everything: set[int] = set(range(history))

    def nothing_in_neither_place() -> None:
        # What was committed before the look (a bar committed after it may be missing from it).
        expected = everything.union(*(d.committed.copy() for d in dxy))
        with connect(dsn) as conn:
            present = dxy_minutes(conn, "source") | dxy_minutes(conn, "target")
        assert expected <= present, sorted(expected - present)[:10]

    with load:
        copied = cli("relocate", "dxy", "copy", "--batch-size", "300", dsn=dsn)
        assert copied.exit_code == 0, copied.stderr
        switched = cli("relocate", "dxy", "switch", "--reason", "load test", dsn=dsn)
        assert switched.exit_code == 0, switched.stderr
        checked = cli("reconcile", "dxy_1m_bars", dsn=dsn)
        assert checked.exit_code == 0, checked.stdout + checked.stderr
        kills = killed_then_finished(
            dsn,
            ["relocate", "dxy", "cleanup", "--force", "--reason", "load test"],
            2,
            1,
            nothing_in_neither_place,
        )
        kills += killed_then_finished(dsn, ["relocate", "dxy", "purge"], 2, 2, nothing_in_neither_place)
    load.check()
    with connect(dsn) as conn:
        lost = sum(d.missing(conn) for d in dxy)
        target = dxy_minutes(conn, "target")
        left = dxy_minutes(conn, "source")
        (view,) = conn.execute(
            "SELECT count(*) FROM market.bars_1m WHERE symbol = 'DXY' OR instrument_token IS NULL"
        ).fetchone()  # type: ignore[misc]
        (step,) = conn.execute("SELECT step FROM keyshift.relocations WHERE name = 'dxy_1m_bars'").fetchone()  # type: ignore[misc]
    assert step == "purged"
    assert lost == 0
    assert everything <= target and left <= target  # a bar still in the source is also in the target
    assert kills >= 2
    assert load.max_wait <= REVISION_LOCK_TIMEOUT_S + 1.0, load.max_wait
    report(
        f"DXY relocation (copy, switch, cleanup, purge) under write_dxy_bar; clients SIGKILLed {kills} times",
        load,
        f"{kills} x SIGKILL (cleanup, purge)",
        lost,
    )
    assert view >= len(target)
