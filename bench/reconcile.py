"""Reconcile time against its floor: one count(*) + sum(hashtext) pass over both tables.

    python -m bench.reconcile [--rows N] [--runs R] [--json]

Two tables of N rows (bigint key, numeric, text, timestamptz, jsonb) that
differ in 7 rows (2 missing, 2 extra, 3 changed). Measured in the same run:
the time keyshift takes to reach the verdict and list the differing rows
(default buckets: ranges of the indexed integer key; and 256 buckets of the
key's hash, as for any other key, which makes the drill-down read both tables
again), and the floor: one sequential pass over each table computing count(*) and
sum(hashtext(row::text)). Every run must find exactly the 7 differences.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from bench import common
from toolkit import db, migrate, reconcile

SETUP = """
CREATE SCHEMA bench;
CREATE TABLE bench.src (id bigint PRIMARY KEY, amount numeric, note text, at timestamptz, payload jsonb);
INSERT INTO bench.src
SELECT i, i * 0.25, 'note ' || i, '2026-01-01'::timestamptz + i * interval '1 second',
       jsonb_build_object('i', i)
  FROM generate_series(1, %(rows)s) i;
CREATE TABLE bench.tgt (LIKE bench.src INCLUDING ALL);
INSERT INTO bench.tgt SELECT * FROM bench.src;
DELETE FROM bench.tgt WHERE id IN (17, %(rows)s / 2);
INSERT INTO bench.tgt (id, amount) VALUES (%(rows)s + 1, 1), (%(rows)s + 2, 2);
UPDATE bench.tgt SET amount = amount + 1 WHERE id = 5;
UPDATE bench.tgt SET note = NULL WHERE id = %(rows)s / 3;
UPDATE bench.tgt SET at = at + interval '1 ms' WHERE id = %(rows)s - 1;
"""
EXPECTED = {"missing": 2, "extra": 2, "changed": 3}
FLOOR = sql.SQL("SELECT count(*), sum(hashtext(t::text)) FROM bench.{} t")


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], default_rows=2_000_000)
    args = p.parse_args()
    info = common.server_info(args.dsn)
    with common.scratch_database(args.dsn, "ks_bench_reconcile", args.keep) as dsn:
        migrate.upgrade(dsn, "control_schema")
        with db.connection(dsn, autocommit=True) as conn:
            for statement in SETUP.strip().split(";\n"):
                conn.execute(statement, {"rows": args.rows})
            conn.execute("VACUUM ANALYZE bench.src")
            conn.execute("VACUUM ANALYZE bench.tgt")
            floor: list[float] = []
            by_range: list[float] = []
            by_hash: list[float] = []
            serial: list[float] = []
            for _ in range(args.runs):
                seconds, _ = common.timed(
                    lambda: [
                        conn.execute(FLOOR.format(sql.Identifier(side))).fetchone() for side in ("src", "tgt")
                    ]
                )
                floor.append(seconds)
                for runs, options in (
                    (by_range, {"helper_dsn": dsn, "key": ["id"]}),
                    (by_hash, {"helper_dsn": dsn, "key": ["payload", "id"]}),
                    (serial, {"key": ["id"]}),
                ):
                    seconds, result = common.timed(
                        lambda o=options: reconcile.run_adhoc(conn, "bench.src", "bench.tgt", **o)
                    )
                    if result.categories != EXPECTED or len(result.differences) != 7:
                        raise SystemExit(f"reconcile missed differences: {result.categories}")
                    runs.append(seconds)
    figures = [
        common.Figure(
            "reconcile, default buckets, 2 backends",
            "s",
            by_range,
            floor,
            notes="verdict + the 7 differing rows; id ranges, drill-down by index",
        ).check("<=", 2.0),
        common.Figure("reconcile, default buckets, 1 backend", "s", serial, floor),
        common.Figure(
            "reconcile, key-hash buckets, 2 backends",
            "s",
            by_hash,
            floor,
            notes="key (payload, id): no index leads with it",
        ).check("<=", 2.0),
    ]
    inputs: dict[str, Any] = {"rows": args.rows, "runs": args.runs, "differences": 7}
    common.report("reconcile", info, inputs, figures, args.json)


if __name__ == "__main__":
    main()
