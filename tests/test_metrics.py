"""keyshift metrics: Prometheus text parsed back with the official parser, values equal to the database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.legacy import make_legacy_db
from toolkit import backfill, relocation


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def insert_run(conn: psycopg.Connection[Any], pair: str, matched: int, total: int, age: str) -> None:
    """A reconciliation run as keyshift.reconcile_runs holds it, finished ``age`` ago."""
    conn.execute(
        "INSERT INTO keyshift.reconcile_runs (pair, source, target, mode, threshold, started_at, finished_at,"
        " duration_ms, rows_source, rows_target, rows_matched, buckets_total, buckets_mismatched,"
        " match_ratio, verdict)"
        " VALUES (%s, 'a', 'b', 'strict', 1, now() - %s::interval - interval '1 second',"
        " now() - %s::interval, 1000, %s, %s, %s, 4, %s, %s::numeric / %s, %s)",
        (pair, age, age, total, total, matched, 0 if matched == total else 1, matched, total,
         "pass" if matched == total else "fail"),
    )  # fmt: skip


def test_metrics_equal_what_the_database_holds(cli: Callable, new_db: Callable[..., str]) -> None:  # type: ignore[type-arg]
    dsn = make_legacy_db(new_db, bars_tokens=(101, 102, 999), minutes=120)
    result = backfill.run(dsn, "market.data_bars")
    assert result.rows_dead_lettered == 120  # token 999 has no mapping
    with psycopg.connect(dsn, autocommit=True) as conn:
        insert_run(conn, "dxy_1m_bars", 90, 100, "2 hours")
        insert_run(conn, "dxy_1m_bars", 100, 100, "10 minutes")  # the latest one counts
        insert_run(conn, "memberships", 7, 8, "1 day")
        conn.execute(
            "SELECT keyshift.dead_letter('memberships', 'INSERT', '{\"k\": 1}', '{}', 'unmapped token')"
        )
        conn.execute(
            "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close)"
            " VALUES ('DXY', '1m', now() - interval '90 seconds', 104, 104, 104, 104),"
            " ('DXY', '1m', now() - interval '1 hour', 104, 104, 104, 104),"
            " ('DXY', '5m', now(), 104, 104, 104, 104)"  # not a 1m bar: does not count
        )
        expected_rows = conn.execute(
            "SELECT table_schema || '.' || table_name, rows_updated, rows_dead_lettered, status"
            " FROM keyshift.backfill_state"
        ).fetchall()
        letters = dict(
            conn.execute(
                "SELECT source, count(*) FROM keyshift.dead_letters WHERE resolved_at IS NULL GROUP BY 1"
            ).fetchall()
        )
        phases = dict(
            conn.execute("SELECT table_schema || '.' || table_name, phase FROM keyshift.migrated_tables")
        )

    out = cli("metrics", dsn=dsn)
    assert out.exit_code == 0, out.stderr
    m = parse(out.stdout)

    assert m[("keyshift_schema_revision_info", (("revision", "key_columns"),))] == 1
    for table, phase in phases.items():
        assert m[("keyshift_table_phase", (("phase", phase), ("table", table)))] == 1
        assert m[("keyshift_table_phase", (("phase", "key_only"), ("table", table)))] == 0
    for table, rows, dead, status in expected_rows:
        assert m[("keyshift_backfill_rows_total", (("table", table),))] == rows
        assert m[("keyshift_backfill_dead_lettered_rows_total", (("table", table),))] == dead
        assert m[("keyshift_backfill_done", (("table", table),))] == (1 if status == "done" else 0)
    assert m[("keyshift_backfill_rows_total", (("table", "market.data_bars"),))] == 240
    assert m[("keyshift_backfill_rate_rows_per_second", (("table", "market.data_bars"),))] > 0
    assert letters == {"market.data_bars": 120, "memberships": 1}
    for source, count in letters.items():
        assert m[("keyshift_dead_letters", (("source", source),))] == count

    assert m[("keyshift_reconcile_match_ratio", (("pair", "dxy_1m_bars"),))] == 1.0
    assert m[("keyshift_reconcile_passed", (("pair", "dxy_1m_bars"),))] == 1
    assert 600 <= m[("keyshift_reconcile_age_seconds", (("pair", "dxy_1m_bars"),))] < 660
    assert m[("keyshift_reconcile_match_ratio", (("pair", "memberships"),))] == 0.875
    assert m[("keyshift_reconcile_passed", (("pair", "memberships"),))] == 0
    assert 86400 <= m[("keyshift_reconcile_age_seconds", (("pair", "memberships"),))] < 86460
    assert 90 <= m[("keyshift_dxy_staleness_seconds", ())] < 150


def test_textfile_is_written_for_node_exporter(cli: Callable, head_dsn: str, tmp_path: Path) -> None:  # type: ignore[type-arg]
    target = tmp_path / "keyshift.prom"
    out = cli("metrics", "--textfile", str(target), dsn=head_dsn)
    assert out.exit_code == 0, out.stderr
    m = parse(target.read_text())
    assert m[("keyshift_table_phase", (("phase", "key_primary"), ("table", "market.data_bars")))] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keyshift.prom"]  # no temporary file left


def test_bad_textfile_and_bare_database_exit_2(
    cli: Callable, head_dsn: str, empty_dsn: str, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    out = cli("metrics", "--textfile", str(tmp_path / "missing" / "k.prom"), dsn=head_dsn)
    assert out.exit_code == 2
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr
    out = cli("metrics", "--textfile", str(tmp_path / "k.txt"), dsn=head_dsn)
    assert out.exit_code == 2 and ".prom" in out.stderr
    assert list(tmp_path.iterdir()) == []
    out = cli("metrics", dsn=empty_dsn)
    assert out.exit_code == 2
    assert "no keyshift control schema" in out.stderr


def test_relocation_metrics_follow_the_relocation(cli: Callable, head_dsn: str) -> None:  # type: ignore[type-arg]
    """Step and soak time left of each relocation (revision dxy_relocation)."""
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close)"
            " SELECT 'DXY', '1m', date_trunc('minute', now()) - m * interval '1 minute', 104, 104, 104, 104"
            " FROM generate_series(0, 99) m"
        )
    m = parse(cli("metrics", dsn=head_dsn).stdout)
    assert m[("keyshift_relocation_step", (("relocation", "dxy_1m_bars"), ("step", "installed")))] == 1
    assert ("keyshift_relocation_soak_left_seconds", (("relocation", "dxy_1m_bars"),)) not in m
    relocation.copy(head_dsn, "dxy")
    relocation.switch(head_dsn, "dxy", "metrics test")
    m = parse(cli("metrics", dsn=head_dsn).stdout)
    assert m[("keyshift_relocation_step", (("relocation", "dxy_1m_bars"), ("step", "switched")))] == 1
    assert (
        86400 - 60 < m[("keyshift_relocation_soak_left_seconds", (("relocation", "dxy_1m_bars"),))] <= 86400
    )
    assert m[("keyshift_dxy_staleness_seconds", ())] < 120
