"""Sync-trigger overhead: single-row inserts from several clients, and one bulk INSERT ... SELECT.

    python -m bench.sync_trigger [--rows N] [--clients C] [--seconds S] [--json]

(a) pgbench, a custom script of one-row INSERTs into market.data_bars from
--clients connections: tps with the table's key sync triggers (phase dual)
vs the same table with them disabled. Target: >= 0.90.
(b) INSERT ... SELECT of --rows bars with vs without the triggers, in two
orders: each instrument's day together (a history load) and each minute's
bars of all instruments together. Target: <= 2.0x. Also the cheaper path for
a bulk load: the same rows carrying their key, joined from the registry in
the statement (floor: the token-only load without triggers).
(c) Where a single-row INSERT's time goes: EXPLAIN ANALYZE of --explain
statements in one session, the executor time with vs without the triggers
and each trigger's share (robust to a busy machine where tps is not).
"""

from __future__ import annotations

import random
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from psycopg import sql

from bench import common, seed
from toolkit import db, migrate

PGBENCH_SCRIPT = """\\set tok random(100001, 105000)
\\set ms random(0, 999999999)
INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)
VALUES (:tok, '1m',
        '2026-02-01'::timestamptz + (:client_id * 1000000000::bigint + :ms) * interval '1 millisecond',
        1, 1, 1, 1)
ON CONFLICT DO NOTHING;
"""

WARMUP = 20


def prepare(dsn: str) -> None:
    migrate.upgrade(dsn, str(migrate.script().get_revision("key_primary_contract").down_revision))
    with db.connection(dsn, autocommit=True) as conn:
        seed.registry(conn)
        conn.execute("VACUUM ANALYZE")


def without_triggers(dsn: str) -> None:
    with db.connection(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE market.data_bars DISABLE TRIGGER USER")


def pgbench_tps(dsn: str, clients: int, seconds: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "insert.sql"
        script.write_text(PGBENCH_SCRIPT)
        out = subprocess.run(
            [
                "pgbench",
                "-n",
                "-f",
                str(script),
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(seconds),
                dsn,
            ],
            capture_output=True,
            text=True,
        )
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip()}")
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{out.stdout}")
    return float(match.group(1))


COLUMNS = "instrument_token, timeframe, ts, open, high, low, close, volume"
# The cheaper path for a bulk load in phase dual: one hash join with the
# registry resolves every row, so the row trigger only marks the statement and
# the pairs are checked together after it.
KEYED = sql.SQL(
    "INSERT INTO market.data_bars ({}, instrument_key) SELECT b.*, m.instrument_key FROM ({}) b"
    " LEFT JOIN instrument_registry.broker_instrument_tokens m ON m.broker = %(broker)s"
    " AND m.instrument_token = b.instrument_token AND m.valid_from <= b.ts"
    " AND (m.valid_to IS NULL OR m.valid_to > b.ts)"
)


def bulk_seconds(dsn: str, rows: int, order: str, keyed: bool = False) -> float:
    """One INSERT ... SELECT of ``rows`` bars; ``keyed``: the loader writes the key too, joined set-based."""
    select, params = seed.bars_sql(rows, order, start="2026-01-19 20:00:00+00")
    template = KEYED if keyed else sql.SQL("INSERT INTO market.data_bars ({}) {}")
    statement = template.format(sql.SQL(COLUMNS), sql.SQL(select))
    with db.connection(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(statement, {**params, "broker": seed.BROKER})
        return time.perf_counter() - started


def trigger_breakdown(dsn: str, statements: int) -> tuple[dict[str, list[float]], list[float]]:
    """Microseconds per single-row INSERT in each trigger, and in the whole executor (EXPLAIN ANALYZE).

    One session, one transaction rolled back; the first statements only warm
    the plans (plpgsql plans its queries on first use and goes generic after
    five runs), as a pooled connection would have.
    """
    per_trigger: dict[str, list[float]] = {}
    executor: list[float] = []
    rng = random.Random(11)
    with db.connection(dsn) as conn:
        for i in range(statements + WARMUP):
            (plan,) = conn.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON, COSTS OFF) INSERT INTO market.data_bars"
                " (instrument_token, timeframe, ts, open, high, low, close)"
                " VALUES (%s, '1m', '2026-03-01'::timestamptz + %s * interval '1 second', 1, 1, 1, 1)",
                (seed.FIRST_TOKEN + rng.randrange(5000), i),
            ).fetchone() or ([{}],)
            if i < WARMUP:
                continue
            executor.append(plan[0]["Execution Time"] * 1000)
            for trigger in plan[0].get("Triggers", []):
                per_trigger.setdefault(trigger["Trigger Name"], []).append(trigger["Time"] * 1000)
        conn.rollback()
    return per_trigger, executor


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], default_rows=1_000_000)
    p.add_argument("--clients", type=int, default=4, help="pgbench clients (default 4)")
    p.add_argument("--seconds", type=int, default=15, help="pgbench duration per run (default 15)")
    p.add_argument(
        "--explain", type=int, default=500, help="single-row INSERTs timed with EXPLAIN ANALYZE (default 500)"
    )
    args = p.parse_args()
    info = common.server_info(args.dsn)
    with common.scratch_database(args.dsn, "ks_bench_trigger", args.keep) as dsn:
        prepare(dsn)
        tps_with: list[float] = []
        tps_without: list[float] = []
        bulk: dict[str, tuple[list[float], list[float]]] = {"instrument": ([], []), "time": ([], [])}
        keyed: dict[str, list[float]] = {order: [] for order in bulk}
        explain_with: list[float] = []
        explain_without: list[float] = []
        trigger_times: dict[str, list[float]] = {}
        for i in range(args.runs):
            with common.clone(dsn, f"t{i}") as copy:
                tps_with.append(pgbench_tps(copy, args.clients, args.seconds))
            with common.clone(dsn, f"u{i}") as copy:
                without_triggers(copy)
                tps_without.append(pgbench_tps(copy, args.clients, args.seconds))
            with common.clone(dsn, f"e{i}") as copy:
                per_trigger, executor = trigger_breakdown(copy, args.explain)
                without_triggers(copy)
                _, bare_executor = trigger_breakdown(copy, args.explain)
                explain_with.append(statistics.median(executor))
                explain_without.append(statistics.median(bare_executor))
                for name, times in per_trigger.items():
                    trigger_times.setdefault(name, []).append(statistics.median(times))
            for order, (with_runs, without_runs) in bulk.items():
                with common.clone(dsn, f"b{order[0]}{i}") as copy:
                    common.checkpoint(copy)
                    with_runs.append(bulk_seconds(copy, args.rows, order))
                with common.clone(dsn, f"c{order[0]}{i}") as copy:
                    without_triggers(copy)
                    common.checkpoint(copy)
                    without_runs.append(bulk_seconds(copy, args.rows, order))
                with common.clone(dsn, f"k{order[0]}{i}") as copy:
                    common.checkpoint(copy)
                    keyed[order].append(bulk_seconds(copy, args.rows, order, keyed=True))
    # tps: higher is better, so the ratio is with/without and the target a minimum.
    figures = [
        common.Figure(
            "single-row insert tps, with triggers",
            "tps",
            tps_with,
            tps_without,
            notes=f"pgbench, {args.clients} clients, {args.seconds} s; floor: triggers disabled",
        ).check(">=", 0.90),
    ]
    figures.append(
        common.Figure(
            "single-row INSERT executor time",
            "us",
            explain_with,
            explain_without,
            notes=f"EXPLAIN ANALYZE, median of {args.explain} statements; floor: triggers disabled",
        )
    )
    figures += [
        common.Figure(f"of which trigger {name}", "us", times, notes="EXPLAIN ANALYZE, per statement")
        for name, times in sorted(trigger_times.items())
    ]
    for order, (with_runs, without_runs) in bulk.items():
        label = "grouped by instrument" if order == "instrument" else "interleaved by minute"
        figures.append(
            common.Figure(
                f"bulk INSERT ... SELECT, {label}",
                "s",
                with_runs,
                without_runs,
                notes="floor: triggers disabled",
            ).check("<=", 2.0)
        )
        figures.append(
            common.Figure(
                f"bulk INSERT ... SELECT carrying the key, {label}",
                "s",
                keyed[order],
                without_runs,
                notes="key joined from the registry in the statement; floor: token-only, triggers disabled",
            ).check("<=", 2.0)
        )
    inputs: dict[str, Any] = {
        "rows": args.rows,
        "runs": args.runs,
        "clients": args.clients,
        "seconds": args.seconds,
        "explain_statements": args.explain,
        "instruments": 5000,
    }
    common.report("sync trigger overhead", info, inputs, figures, args.json)


if __name__ == "__main__":
    main()
