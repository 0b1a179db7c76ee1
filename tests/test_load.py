"""A cutover under load: writers keep inserting, updating and deleting for the whole run.

token -> key of market.data_bars: expand (every revision but the contract),
backfill, `keyshift phase ... key_primary`, contract (alembic upgrade head);
then zero NULL keys, zero inconsistent pairs, every committed write present,
and no writer waited longer than the revision's lock_timeout plus one batch.
The same for the memberships dual-write while `keyshift memberships sync` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.legacy import legacy_bars, seed_registry
from tests.load import BarWriter, Load, MembershipWriter, Writer, connect, expand_revision, report
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
