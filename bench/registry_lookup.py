"""Registry lookup: resolve_key per call in the database, and p95 over the network path.

    python -m bench.registry_lookup [--rows CALLS] [--json]

50,000 mappings, 5,000 of them tokens reused halfway. In-database: one
statement calling resolve_key --rows times at random tokens and times
(floor: the same statement reading the same random inputs without the call).
Network path: one client, one SELECT resolve_key(...) round trip per call;
the seed's requirement was p95 < 50 ms.
"""

from __future__ import annotations

import random
import time
from typing import Any

from bench import common, seed
from toolkit import db, migrate

INPUTS = (
    "SELECT 100001 + (random() * 44999)::int AS tok,"
    " '2026-01-01'::timestamptz + random() * interval '40 days' AS at"
    " FROM generate_series(1, %s)"
)
# resolve_key's body as a LATERAL subquery: what the call would cost were it
# inlined (a scalar SQL function whose body has a subquery never is, so each
# call starts an executor of its own).
LATERAL = (
    "SELECT count(r.instrument_key) FROM inputs i LEFT JOIN LATERAL ("
    " SELECT CASE WHEN t.broker = 'zerodha' AND t.instrument_token = i.tok"
    " AND (t.valid_to IS NULL OR t.valid_to > i.at) THEN t.instrument_key END AS instrument_key"
    " FROM instrument_registry.broker_instrument_tokens t"
    " WHERE (t.broker, t.instrument_token, t.valid_from) <= ('zerodha', i.tok, i.at)"
    " ORDER BY t.broker DESC, t.instrument_token DESC, t.valid_from DESC LIMIT 1) r ON true"
)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], default_rows=200_000)
    p.add_argument("--network-calls", type=int, default=5000, help="round trips for the p95 (default 5000)")
    args = p.parse_args()
    info = common.server_info(args.dsn)
    with common.scratch_database(args.dsn, "ks_bench_lookup", args.keep) as dsn:
        migrate.upgrade(dsn, "instrument_registry")
        with db.connection(dsn, autocommit=True) as conn:
            seed.registry(conn, instruments=45_000, reused=5_000)
            conn.execute("VACUUM ANALYZE instrument_registry.broker_instrument_tokens")
            (mappings,) = conn.execute(
                "SELECT count(*) FROM instrument_registry.broker_instrument_tokens"
            ).fetchone() or (0,)
            per_call: list[float] = []
            floor: list[float] = []
            lateral: list[float] = []
            for _ in range(args.runs):
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS inputs AS " + INPUTS.replace("%s", str(int(args.rows)))
                )
                started = time.perf_counter()
                conn.execute(
                    "SELECT count(instrument_registry.resolve_key('zerodha', tok, at)) FROM inputs"
                ).fetchone()
                per_call.append((time.perf_counter() - started) / args.rows * 1e6)
                started = time.perf_counter()
                conn.execute("SELECT count(tok + 1) FROM inputs").fetchone()
                floor.append((time.perf_counter() - started) / args.rows * 1e6)
                started = time.perf_counter()
                conn.execute(LATERAL).fetchone()
                lateral.append((time.perf_counter() - started) / args.rows * 1e6)
                conn.execute("DROP TABLE inputs")
            rng = random.Random(7)
            latencies = []
            for _ in range(args.network_calls):
                token = 100_001 + rng.randrange(45_000)
                started = time.perf_counter()
                conn.execute(
                    "SELECT instrument_registry.resolve_key("
                    "'zerodha', %s, '2026-01-01'::timestamptz + %s * interval '1 hour')",
                    (token, rng.randrange(960)),
                ).fetchone()
                latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95)]
    figures = [
        common.Figure(
            "resolve_key in the database",
            "us/call",
            per_call,
            floor,
            notes="floor: the same statement without the call",
        ),
        common.Figure(
            "the same lookup as a LATERAL subquery",
            "us/call",
            lateral,
            floor,
            notes="resolve_key's body inlined by hand: what the call would cost if the planner inlined it",
        ),
        common.Figure("resolve_key calls per second", "calls/s", [1e6 / c for c in per_call]),
        common.Figure(
            "resolve_key p95 over the network path",
            "ms",
            [p95],
            notes=f"{args.network_calls} sequential round trips on loopback",
        ).check("<=", 50),
    ]
    inputs: dict[str, Any] = {
        "mappings": mappings,
        "reused_tokens": 5000,
        "calls": args.rows,
        "runs": args.runs,
    }
    common.report("registry lookup", info, inputs, figures, args.json)


if __name__ == "__main__":
    main()
