"""Pre-flight time against its floor: the same check queries run bare, one after another.

    python -m bench.preflight [--rows N] [--runs R] [--json]

The database holds N legacy minute bars (~5,000 instruments, 10% of tokens
reused) in phase dual with no key yet: the state before a backfill, where the
scanning checks (unmapped_tokens, null_keys) read every row. Measured on one
open connection: `keyshift preflight --for all` and the default step `any`
(catalog checks only). The floor runs each selected check's query with the
same parameters in autocommit, with no READ ONLY transaction, savepoints,
timeouts or `requires` look-ups.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench import common, seed
from toolkit import db, migrate, preflight


def prepare(dsn: str, rows: int) -> None:
    migrate.upgrade(dsn, "instrument_registry")
    with db.connection(dsn, autocommit=True) as conn:
        seed.registry(conn)
        seed.legacy_bars(conn, rows)
    migrate.upgrade(dsn, "index_memberships_dual_write")  # dual, keys NULL: before the backfill
    with db.connection(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def keyshift_run(dsn: str, step: str) -> tuple[float, preflight.Report]:
    with db.connection(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        report = preflight.run(conn, step)
        return time.perf_counter() - started, report


def floor(dsn: str, step: str) -> float:
    checks = preflight.plan(step)
    with db.connection(dsn, autocommit=True) as conn:
        values = preflight.ParamValues(conn, step)
        params = {c.id: [values.get(p) for p in c.params] for c in checks}
        started = time.perf_counter()
        for check in checks:
            with psycopg.RawCursor(conn) as cur:
                cur.execute(check.sql, params[check.id] or None)
                cur.fetchall()
        return time.perf_counter() - started


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], default_rows=1_000_000)
    args = p.parse_args()
    info = common.server_info(args.dsn)
    figures: list[common.Figure] = []
    with common.scratch_database(args.dsn, "ks_bench_preflight", args.keep) as dsn:
        prepare(dsn, args.rows)
        keyshift_run(dsn, "all")  # warm the cache and the imports alike for both sides
        # --for all is dominated by the scans, so its ratio shows the runner's overhead; --for any
        # is catalog checks of a few ms each, where the fixed per-check cost (a savepoint, the
        # requires look-ups) dominates the ratio: its target is on the time itself (notes).
        for step, target in (("all", 1.25), ("any", None)):
            runs, floors, per_check = [], [], {}
            for _ in range(args.runs):
                seconds, report = keyshift_run(dsn, step)
                runs.append(seconds)
                floors.append(floor(dsn, step))
                for r in report.results:
                    per_check.setdefault(r.id, []).append(r.seconds)
            slowest = sorted(per_check.items(), key=lambda kv: -sorted(kv[1])[len(kv[1]) // 2])[:2]
            figure = common.Figure(
                f"preflight --for {step} ({len(report.results)} checks)",
                "s",
                runs,
                floors,
                notes="slowest: " + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.3f} s" for k, v in slowest),
            )
            if target is not None:
                figure.check("<=", target)
            else:
                figure.target, figure.met = "< 1 s", figure.median < 1.0
            figures.append(figure)
    inputs: dict[str, Any] = {
        "rows": args.rows,
        "runs": args.runs,
        "instruments": 5000,
        "phase": "dual, no keys",
    }
    common.report("preflight", info, inputs, figures, args.json)


if __name__ == "__main__":
    main()
