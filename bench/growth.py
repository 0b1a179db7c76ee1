"""Growth: backfill time per row at N, 5N (and 20N with --large) rows must stay flat within 25%.

    python -m bench.growth [--rows N] [--runs R] [--large] [--json]

Each size gets its own scratch database with the same data shape as
bench.backfill (minute bars of ~5,000 instruments in time order, 10% of
tokens reused halfway); every run backfills a fresh copy. The floor of each
size is the time per row at the smallest size, measured in the same run.
Reconciliation's growth belongs beside it once bench.reconcile lands.
"""

from __future__ import annotations

from typing import Any

from bench import backfill as backfill_bench
from bench import common
from toolkit import backfill

SCALE = (1, 5)
LARGE_SCALE = (1, 5, 20)


def per_row_us(dsn: str, rows: int, runs: int) -> list[float]:
    """Microseconds per row of ``runs`` backfills, each on a fresh copy of ``dsn``."""
    times = []
    for i in range(runs):
        with common.clone(dsn, f"g{i}") as copy:
            common.checkpoint(copy)
            seconds, _ = common.timed(lambda copy=copy: backfill.run(copy, backfill_bench.TABLE))
            times.append(seconds / rows * 1e6)
    return times


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], default_rows=1_000_000)
    p.add_argument("--large", action="store_true", help="also 20x the rows (20,000,000 by default)")
    args = p.parse_args()
    info = common.server_info(args.dsn)
    sizes = [args.rows * k for k in (LARGE_SCALE if args.large else SCALE)]
    measured: dict[int, list[float]] = {}
    for size in sizes:
        with common.scratch_database(args.dsn, "ks_bench_growth", args.keep) as dsn:
            backfill_bench.prepare(dsn, size)
            measured[size] = per_row_us(dsn, size, args.runs)
    smallest = measured[sizes[0]]
    figures = [
        common.Figure(
            f"backfill per row at {size:,} rows",
            "us/row",
            runs,
            smallest,
            notes=f"floor: per row at {sizes[0]:,} rows",
        ).check("<=", 1.25)
        for size, runs in measured.items()
    ]
    inputs: dict[str, Any] = {"sizes": sizes, "runs": args.runs, "instruments": 5000, "reused_tokens": 500}
    common.report("growth", info, inputs, figures, args.json)


if __name__ == "__main__":
    main()
