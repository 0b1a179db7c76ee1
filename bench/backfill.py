"""Backfill throughput against its floor: one single-statement UPDATE ... FROM doing the same resolution.

    python -m bench.backfill [--rows N] [--runs R] [--writer-rate R] [--json]

Both run on copies of the same legacy table (minute bars of ~5,000 instruments,
heap in time order, 10% of tokens reused halfway) in phase dual, so both pay
the same sync triggers; the floor with the triggers disabled is printed too.
Also: the median batch transaction, and the p99 latency of a writer inserting
bars at a steady rate, during the backfill vs without it.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from bench import common, seed
from toolkit import backfill, db, migrate

TABLE = "market.data_bars"
FLOOR_SQL = (
    "UPDATE market.data_bars t SET instrument_key = m.instrument_key"
    " FROM instrument_registry.broker_instrument_tokens m"
    " WHERE m.broker = 'zerodha' AND m.instrument_token = t.instrument_token"
    " AND m.valid_from <= t.ts AND (m.valid_to IS NULL OR m.valid_to > t.ts)"
)


def prepare(dsn: str, rows: int) -> None:
    migrate.upgrade(dsn, "instrument_registry")
    with db.connection(dsn, autocommit=True) as conn:
        seed.registry(conn)
        seed.legacy_bars(conn, rows)
    before_contract = migrate.script().get_revision("key_primary_contract").down_revision
    migrate.upgrade(dsn, str(before_contract))
    with db.connection(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE market.data_bars")


def floor(dsn: str, triggers: bool = True) -> float:
    with db.connection(dsn, autocommit=True) as conn:
        if not triggers:
            conn.execute("ALTER TABLE market.data_bars DISABLE TRIGGER USER")
        started = time.perf_counter()
        conn.execute(FLOOR_SQL)
        return time.perf_counter() - started


class Writer(threading.Thread):
    """Inserts one new bar at a time at a steady rate and records each latency."""

    def __init__(self, dsn: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.interval = dsn, 1.0 / rate
        self.latencies: list[tuple[float, float]] = []  # (start time, seconds)
        self.stop = threading.Event()

    def run(self) -> None:
        with db.connection(self.dsn, autocommit=True) as conn:
            n = 0
            next_at = time.perf_counter()
            while not self.stop.is_set():
                n += 1
                started = time.perf_counter()
                conn.execute(
                    "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
                    " VALUES (%s, '5m', '2027-01-01'::timestamptz + %s * interval '5 minutes', 1, 1, 1, 1)",
                    (seed.FIRST_TOKEN + n % 5000, n),
                )
                self.latencies.append((started, time.perf_counter() - started))
                next_at += self.interval
                time.sleep(max(0.0, next_at - time.perf_counter()))

    def p99(self, since: float, until: float) -> float:
        window = sorted(s for t, s in self.latencies if since <= t < until)
        return window[min(len(window) - 1, int(len(window) * 0.99))] * 1000 if window else float("nan")


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], default_rows=5_000_000)
    p.add_argument("--writer-rate", type=float, default=50.0, help="writer inserts per second (default 50)")
    p.add_argument(
        "--quiet-seconds",
        type=float,
        default=None,
        help="writer window without the backfill (default: the median backfill time, at least 5 s)",
    )
    args = p.parse_args()
    info = common.server_info(args.dsn)
    with common.scratch_database(args.dsn, "ks_bench_backfill", args.keep) as dsn:
        prepare(dsn, args.rows)
        runs: list[float] = []
        floors: list[float] = []
        bare: list[float] = []
        batch_medians: list[float] = []
        for i in range(args.runs):
            with common.clone(dsn, f"b{i}") as copy:
                common.checkpoint(copy)
                seconds, result = common.timed(lambda copy=copy: backfill.run(copy, TABLE))
                runs.append(seconds)
                batch_medians.append(result.median_batch_ms)
            with common.clone(dsn, f"f{i}") as copy:
                common.checkpoint(copy)
                floors.append(floor(copy))
            with common.clone(dsn, f"n{i}") as copy:
                common.checkpoint(copy)
                bare.append(floor(copy, triggers=False))
        with common.clone(dsn, "w") as copy:
            writer = Writer(copy, args.writer_rate)
            writer.start()
            quiet = args.quiet_seconds
            time.sleep(min(3.0, quiet) if quiet is not None else 3.0)  # connected and warm
            quiet_from = time.perf_counter()
            time.sleep(quiet if quiet is not None else max(5.0, statistics.median(runs)))
            busy_from = time.perf_counter()
            backfill.run(copy, TABLE)
            busy_to = time.perf_counter()
            writer.stop.set()
            writer.join()
            quiet_p99 = writer.p99(quiet_from, busy_from)
            busy_p99 = writer.p99(busy_from, busy_to)
    figures = [
        common.Figure(
            "backfill time", "s", runs, floors, notes="floor: one UPDATE ... FROM, same triggers"
        ).check("<=", 1.15),
        common.Figure(
            "floor without triggers", "s", bare, notes="the same UPDATE with the table's triggers disabled"
        ),
        common.Figure("rows per second", "rows/s", [args.rows / r for r in runs]),
        common.Figure("median batch transaction", "ms", batch_medians).check("<=", 250),
        common.Figure(
            "writer p99 during backfill",
            "ms",
            [busy_p99],
            [quiet_p99],
            notes=f"{args.writer_rate:g} single-row inserts/s; floor: p99 without the backfill",
        ),
    ]
    inputs: dict[str, Any] = {
        "rows": args.rows,
        "runs": args.runs,
        "instruments": 5000,
        "reused_tokens": 500,
        "heap_order": "time",
        "writer_rate": args.writer_rate,
    }
    common.report("backfill", info, inputs, figures, args.json)


if __name__ == "__main__":
    main()
