"""Smoke runs of the benchmarks: each runs end to end on a tiny input and prints its JSON.

Timings are not asserted (they belong to the benchmarks, not the tests);
the shape is, and that every figure was measured: medians and floors are
positive numbers, ratios are positive, targets are recorded with a verdict.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Server

ROOT = Path(__file__).resolve().parent.parent

# name -> (arguments for a tiny run, figures that must have a floor)
CASES: dict[str, tuple[list[str], set[str]]] = {
    "backfill": (
        ["--rows", "20000", "--writer-rate", "20", "--quiet-seconds", "1"],
        {"backfill time", "writer p99 during backfill"},
    ),
    "sync_trigger": (
        ["--rows", "5000", "--clients", "2", "--seconds", "1", "--explain", "30"],
        {
            "single-row insert tps, with triggers",
            "bulk INSERT ... SELECT, grouped by instrument",
            "bulk INSERT ... SELECT, interleaved by minute",
            "single-row INSERT executor time",
            "bulk INSERT ... SELECT carrying the key, interleaved by minute",
        },
    ),
    "registry_lookup": (
        ["--rows", "2000", "--network-calls", "200"],
        {"resolve_key in the database", "the same lookup as a LATERAL subquery"},
    ),
    "growth": (
        ["--rows", "4000"],
        {"backfill per row at 4,000 rows", "backfill per row at 20,000 rows"},
    ),
}


def run_bench(name: str, args: list[str], server: Server) -> tuple[dict[str, Any], int]:
    """The benchmark's JSON, and its process id (its scratch databases carry it)."""
    with subprocess.Popen(
        [sys.executable, "-m", f"bench.{name}", "--runs", "1", "--json", "--dsn", server.dsn(), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    data: dict[str, Any] = json.loads(stdout)
    return data, proc.pid


def scratch_databases(server: Server, pid: int) -> list[str]:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"ks\\_bench\\_%\\_{pid}\\_%",)
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_reports_its_figures(name: str, pg_server: Server) -> None:
    args, with_floor = CASES[name]
    data, pid = run_bench(name, args, pg_server)

    assert data["server_version"].startswith("15")
    assert {"shared_buffers", "synchronous_commit", "max_wal_size"} <= set(data["settings"])
    assert data["inputs"]["runs"] == 1
    figures = {f["figure"]: f for f in data["figures"]}
    assert with_floor <= set(figures)
    for figure in data["figures"]:
        assert figure["runs"] and all(r > 0 and math.isfinite(r) for r in figure["runs"]), figure
        assert figure["median"] > 0, figure
        if figure["figure"] in with_floor:
            assert figure["floor"] is not None and figure["floor"] > 0, figure
            assert figure["ratio"] is not None and figure["ratio"] > 0, figure
            assert math.isclose(figure["ratio"], figure["median"] / figure["floor"], rel_tol=0.01), figure
        if figure["target"]:
            assert figure["target"].split()[0] in ("<=", ">="), figure
            assert isinstance(figure["met"], bool), figure
    # The scratch database and its copies are gone.
    assert scratch_databases(pg_server, pid) == []


def test_benchmark_prints_a_readable_table(pg_server: Server) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.registry_lookup", "--runs", "1", "--rows", "500"]
        + ["--network-calls", "50", "--dsn", pg_server.dsn()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    first, settings, inputs = out.stdout.splitlines()[:3]
    assert first.startswith("registry lookup") and "PostgreSQL 15" in first
    assert settings.startswith("settings: ") and "shared_buffers=" in settings
    assert inputs.startswith("inputs: ") and "calls=500" in inputs
    assert "resolve_key p95 over the network path" in out.stdout
