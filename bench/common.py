"""Shared scaffolding of the benchmarks: a scratch database, the server's settings, timing, output.

Every benchmark finds the server the usual way (--dsn, DATABASE_URL, PG*),
creates its own scratch database there (the revisions own fixed schemas, so
a schema of its own is not enough), migrates it, and drops it at the end
unless --keep. It prints the server version and the settings that matter,
the inputs, and for every figure the median of several runs beside its
floor measured in the same run, and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from toolkit import db, migrate, output

SETTINGS = ("shared_buffers", "synchronous_commit", "max_wal_size", "work_mem", "checkpoint_timeout")


@dataclass
class Figure:
    """One measured figure against its floor."""

    name: str
    unit: str
    runs: list[float]
    floor_runs: list[float] = field(default_factory=list)
    target: str = ""  # e.g. "<= 1.15" on the ratio
    met: bool | None = None
    notes: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def floor(self) -> float | None:
        return statistics.median(self.floor_runs) if self.floor_runs else None

    @property
    def ratio(self) -> float | None:
        return self.median / self.floor if self.floor else None

    def check(self, op: str, bound: float) -> Figure:
        """Record whether the ratio (or the value, without a floor) meets ``op bound``."""
        value = self.ratio if self.ratio is not None else self.median
        self.target = f"{op} {bound:g}"
        self.met = value <= bound if op == "<=" else value >= bound
        return self

    def row(self) -> dict[str, Any]:
        return {
            "figure": self.name,
            "median": round(self.median, 4),
            "unit": self.unit,
            "floor": round(self.floor, 4) if self.floor is not None else None,
            "ratio": round(self.ratio, 3) if self.ratio is not None else None,
            "target": self.target,
            "met": self.met,
            "runs": [round(r, 4) for r in self.runs],
            "notes": self.notes,
        }


def parser(description: str, default_rows: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--rows", type=int, default=default_rows, help=f"rows of test data (default {default_rows:,})"
    )
    p.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    p.add_argument("--dsn", default=None, help="server to use (default: DATABASE_URL, else PG* variables)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    return p


def server_info(dsn: str | None) -> dict[str, Any]:
    with db.connection(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        rows = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            (list(SETTINGS),),
        ).fetchall()
    return {
        "server_version": version[0] if version else "?",
        "settings": {name: f"{setting}{' ' + unit if unit else ''}" for name, setting, unit in rows},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "date": dt.date.today().isoformat(),
    }


@contextlib.contextmanager
def scratch_database(dsn: str | None, prefix: str, keep: bool = False) -> Iterator[str]:
    """A new empty database on the server; yields its DSN; dropped afterwards unless keep."""
    base = db.resolve_dsn(dsn)
    name = f"{prefix}_{os.getpid()}_{int(time.time())}"
    with db.connection(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield db.with_database(base, name)
    finally:
        if not keep:
            drop_database(base, name)


def drop_database(dsn: str, name: str) -> None:
    with db.connection(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def clone(dsn: str, suffix: str) -> Iterator[str]:
    """A copy of the database ``dsn`` names (CREATE DATABASE ... TEMPLATE), dropped afterwards."""
    source = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
    name = f"{source}_{suffix}"[:63]
    with db.connection(dsn, autocommit=True) as conn:
        # The template may have no other connection while it is copied.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (source,),
        )
    with db.connection(db.with_database(dsn, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(source))
        )
    try:
        yield db.with_database(dsn, name)
    finally:
        drop_database(db.with_database(dsn, "postgres"), name)


def migrated(dsn: str, revision: str) -> None:
    migrate.upgrade(dsn, revision)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def checkpoint(dsn: str) -> None:
    """Start each measured run from the same place: dirty buffers written out."""
    with db.connection(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def report(
    title: str, info: dict[str, Any], inputs: dict[str, Any], figures: list[Figure], as_json: bool
) -> None:
    data = {"benchmark": title, **info, "inputs": inputs, "figures": [f.row() for f in figures]}
    if as_json:
        output.echo_json(data)
        return
    print(f"{title}  ({info['date']}, PostgreSQL {info['server_version']}, {info['machine']})")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in info["settings"].items()))
    print("inputs:   " + ", ".join(f"{k}={v}" for k, v in inputs.items()))
    rows = [{k: v for k, v in f.row().items() if k != "runs"} for f in figures]
    print(output.table(rows))


def as_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)
