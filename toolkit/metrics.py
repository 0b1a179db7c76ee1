"""Prometheus metrics of a migration, read from the control schema.

The database holds the state; this module reads one snapshot of it and hands
it to prometheus_client as a custom collector, so the exposition format
(escaping, ``_total`` suffixes, HELP/TYPE lines) is the library's, never ours.
``keyshift metrics`` prints it, or writes it atomically for node_exporter's
textfile collector (``write_to_textfile`` renames a temporary file into place,
so the collector never reads half a file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from toolkit import control
from toolkit.errors import UsageError
from toolkit.phases import PHASES

# Backfill rate over the wall time from the first batch to the last checkpoint
# (pauses included): what an ETA needs.
_BACKFILL = """
SELECT table_schema || '.' || table_name AS table, status, rows_updated, rows_dead_lettered,
       rows_estimate,
       extract(epoch FROM COALESCE(finished_at, updated_at) - started_at)::float8 AS seconds
  FROM keyshift.backfill_state
 ORDER BY 1
"""

_LAST_RECONCILE = """
SELECT DISTINCT ON (pair) pair, match_ratio::float8 AS match_ratio, verdict,
       extract(epoch FROM pg_catalog.now() - finished_at)::float8 AS age_seconds
  FROM keyshift.reconcile_runs
 ORDER BY pair, id DESC
"""


# Relocations (revision dxy_relocation, issue 5): the step and the soak time left.
_RELOCATIONS = """
SELECT name, step,
       -- greatest() ignores NULL: before the switch there is no soak window at all.
       CASE WHEN switched_at IS NOT NULL THEN
            extract(epoch FROM greatest(switched_at + keyshift.setting(soak_setting)::interval
                                        - pg_catalog.now(), interval '0'))::float8
       END AS soak_left_seconds
  FROM keyshift.relocations ORDER BY name
"""
# The newest DXY 1m bar as readers see it (the view follows the reader switch).
_DXY_STALENESS = """
SELECT extract(epoch FROM pg_catalog.now() - max(ts))::float8 FROM market.bars_1m WHERE symbol = 'DXY'
"""


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything the metrics show, read in one REPEATABLE READ snapshot (conn idle)."""
    with control.read_snapshot(conn) as revision:
        return {
            "revision": revision,
            "tables": control.migrated_tables(conn),
            "backfill": control.query_rows(conn, _BACKFILL),
            "dead_letters": control.open_dead_letters(conn),
            "reconcile": control.query_rows(conn, _LAST_RECONCILE),
            "relocations": control.query_rows(conn, _RELOCATIONS)
            if control.exists(conn, "keyshift.relocations")
            else [],
            "dxy_staleness": _scalar(conn, _DXY_STALENESS)
            if control.exists(conn, "market.bars_1m")
            else None,
        }


def _scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def _gauge(name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels or ("table",)))


def _counter(name: str, documentation: str, *labels: str) -> CounterMetricFamily:
    """A counter family; prometheus_client adds the ``_total`` suffix."""
    return CounterMetricFamily(name, documentation, labels=list(labels or ("table",)))


class SnapshotCollector(Collector):
    """A prometheus_client collector over one snapshot (custom collector pattern)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def collect(self) -> Iterator[Metric]:
        data = self.data
        info = GaugeMetricFamily(
            "keyshift_schema_revision_info", "Revision the database is at", labels=["revision"]
        )
        info.add_metric([data["revision"]], 1)
        yield info

        phase = GaugeMetricFamily(
            "keyshift_table_phase",
            "1 for the phase each table under migration is in, 0 for the others",
            labels=["table", "phase"],
        )
        for t in data["tables"]:
            name = f"{t['table_schema']}.{t['table_name']}"
            for p in PHASES:
                phase.add_metric([name, p], 1 if t["phase"] == p else 0)
        yield phase

        rows = _counter("keyshift_backfill_rows", "Rows given their instrument_key by the backfill")
        dead = _counter(
            "keyshift_backfill_dead_lettered_rows", "Rows the backfill could not resolve and dead-lettered"
        )
        estimate = _gauge("keyshift_backfill_rows_estimate", "Row estimate of the table at backfill start")
        rate = _gauge(
            "keyshift_backfill_rate_rows_per_second", "Rows per second, first batch to last checkpoint"
        )
        done = _gauge("keyshift_backfill_done", "1 once the backfill reached the end of the table")
        for b in data["backfill"]:
            rows.add_metric([b["table"]], b["rows_updated"])
            dead.add_metric([b["table"]], b["rows_dead_lettered"])
            if b["rows_estimate"] is not None:
                estimate.add_metric([b["table"]], b["rows_estimate"])
            seconds = b["seconds"]
            rate.add_metric([b["table"]], b["rows_updated"] / seconds if seconds else 0.0)
            done.add_metric([b["table"]], 1 if b["status"] == "done" else 0)
        yield from (rows, dead, estimate, rate, done)

        letters = _gauge("keyshift_dead_letters", "Open (unresolved) dead letters by source", "source")
        for d in data["dead_letters"]:
            letters.add_metric([d["source"]], d["open"])
        yield letters

        ratio = _gauge("keyshift_reconcile_match_ratio", "Match ratio (0..1) of the last run", "pair")
        age = _gauge("keyshift_reconcile_age_seconds", "Seconds since the last run finished", "pair")
        passed = _gauge("keyshift_reconcile_passed", "1 if the last run's verdict was pass", "pair")
        for r in data["reconcile"]:
            ratio.add_metric([r["pair"]], r["match_ratio"])
            age.add_metric([r["pair"]], r["age_seconds"])
            passed.add_metric([r["pair"]], 1 if r["verdict"] == "pass" else 0)
        yield from (ratio, age, passed)

        step = _gauge("keyshift_relocation_step", "1 for the step of each relocation", "relocation", "step")
        soak = _gauge(
            "keyshift_relocation_soak_left_seconds", "Soak window left after the reader switch", "relocation"
        )
        for r in data["relocations"]:
            step.add_metric([r["name"], r["step"]], 1)
            if r["soak_left_seconds"] is not None:
                soak.add_metric([r["name"]], r["soak_left_seconds"])
        yield from (step, soak)
        if data["dxy_staleness"] is not None:
            yield GaugeMetricFamily(
                "keyshift_dxy_staleness_seconds",
                "Age of the newest DXY 1m bar readers see (market.bars_1m)",
                value=data["dxy_staleness"],
            )


def registry(conn: psycopg.Connection[Any]) -> CollectorRegistry:
    """A fresh registry holding only keyshift's metrics (no process or Python metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snapshot(conn)))
    return reg


def exposition(conn: psycopg.Connection[Any]) -> str:
    """The metrics as Prometheus text exposition format."""
    return generate_latest(registry(conn)).decode()


def write_textfile(conn: psycopg.Connection[Any], path: Path) -> None:
    """Write the metrics atomically to ``path`` (node_exporter's textfile collector)."""
    if not path.parent.is_dir():
        raise UsageError(f"--textfile {path}: directory {path.parent} does not exist; create it first")
    if path.suffix != ".prom":
        raise UsageError(
            f"--textfile {path}: node_exporter reads only *.prom files; name it {path.stem}.prom"
        )
    reg = registry(conn)
    try:
        write_to_textfile(str(path), reg)
    except OSError as exc:
        raise UsageError(f"--textfile {path}: cannot write ({exc.strerror}); check the permissions") from None
