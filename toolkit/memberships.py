"""Index memberships: initial copy and catch-up, retention, rollback to single-write.

The dual-write itself is in the database (sql/templates/dual_write.sql.j2);
these functions drive its batched parts, one transaction per batch, with the
cursor in keyshift.flow_state so a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from toolkit import db
from toolkit.control import require_control_schema, set_setting
from toolkit.errors import EXIT_USAGE, KeyshiftError, UsageError

FLOW = "memberships.sync"
LEGACY = "screener.index_memberships"
REGISTRY = "instrument_registry.index_memberships"


def _require(conn: psycopg.Connection[Any]) -> None:
    require_control_schema(conn)
    row = conn.execute("SELECT to_regclass('instrument_registry.index_memberships') IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise KeyshiftError(
            "this database has no registry memberships; run 'alembic upgrade index_memberships_dual_write'",
            EXIT_USAGE,
        )


def _setting(conn: psycopg.Connection[Any], key: str) -> str:
    row = conn.execute("SELECT keyshift.setting(%s)", (key,)).fetchone()
    assert row is not None
    return str(row[0])


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM screener.index_memberships),"
        " (SELECT count(*) FROM instrument_registry.index_memberships),"
        " (SELECT count(*) FROM instrument_registry.index_memberships_archive),"
        " (SELECT count(*) FROM keyshift.dead_letters WHERE source = 'memberships' AND resolved_at IS NULL)"
    ).fetchone()
    assert row is not None
    return dict(zip(("legacy_rows", "registry_rows", "archived_rows", "open_dead_letters"), row, strict=True))


def sync(dsn: str | None, batch_size: int | None = None) -> dict[str, Any]:
    """Bring the registry in step with the legacy table: copy every row, then archive orphans.

    The initial copy and the catch-up after single-write are the same run. It
    resumes from its cursor when a previous run was interrupted.
    """
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be a positive number of rows, got {batch_size}")
    started = time.monotonic()
    with db.connection(dsn, autocommit=True) as conn:
        _require(conn)
        limit = batch_size or int(_setting(conn, "memberships.batch_size"))
        conn.execute(
            "INSERT INTO keyshift.flow_state (flow) VALUES (%s) ON CONFLICT (flow) DO NOTHING", (FLOW,)
        )
        with conn.cursor(row_factory=dict_row) as cur:
            state = cur.execute("SELECT * FROM keyshift.flow_state WHERE flow = %s", (FLOW,)).fetchone()
        assert state is not None
        resume = state["status"] == "running"
        cursor = state["last_key"] if resume else None
        conn.execute(
            "UPDATE keyshift.flow_state SET status = 'running', last_key = %s,"
            " started_at = CASE WHEN %s THEN started_at ELSE now() END,"
            " rows_done = CASE WHEN %s THEN rows_done ELSE 0 END,"
            " rows_dead_lettered = CASE WHEN %s THEN rows_dead_lettered ELSE 0 END,"
            " updated_at = now() WHERE flow = %s",
            (psycopg.types.json.Jsonb(cursor) if cursor else None, resume, resume, resume, FLOW),
        )
        totals = {"rows_applied": 0, "rows_dead_lettered": 0, "rows_archived_skipped": 0, "batches": 0}
        while True:
            with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(
                    "SELECT * FROM keyshift.dual_write_sync__memberships(%s, %s)",
                    (psycopg.types.json.Jsonb(cursor) if cursor else None, limit),
                ).fetchone()
                assert row is not None
                if row["last_key"] == cursor:
                    break
                cursor = row["last_key"]
                # The cursor moves in the batch's own transaction.
                cur.execute(
                    "UPDATE keyshift.flow_state SET last_key = %s, rows_done = rows_done + %s,"
                    " rows_dead_lettered = rows_dead_lettered + %s, updated_at = now() WHERE flow = %s",
                    (psycopg.types.json.Jsonb(cursor), row["rows_applied"], row["rows_dead_lettered"], FLOW),
                )
            totals["batches"] += 1
            for key in ("rows_applied", "rows_dead_lettered", "rows_archived_skipped"):
                totals[key] += int(row[key])
        orphans = 0
        while True:
            with conn.transaction():
                moved = conn.execute(
                    "SELECT keyshift.dual_write_orphans__memberships(%s)", (limit,)
                ).fetchone()
            assert moved is not None
            orphans += int(moved[0])
            if moved[0] < limit:
                break
        conn.execute(
            "UPDATE keyshift.flow_state SET status = 'done', finished_at = now(), updated_at = now(),"
            " details = jsonb_build_object('orphans_archived', %s::bigint) WHERE flow = %s",
            (orphans, FLOW),
        )
        result: dict[str, Any] = {**totals, "orphans_archived": orphans, "resumed": resume}
        result.update(counts(conn))
        result["dual_write_enabled"] = _setting(conn, "memberships.dual_write_enabled") == "true"
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def rollback(dsn: str | None, reason: str) -> dict[str, Any]:
    """Single-write: one flag, one statement; the legacy table keeps every write."""
    with db.connection(dsn, autocommit=True) as conn:
        _require(conn)
        change = set_setting(conn, "memberships.dual_write_enabled", "false", reason)
        return {**change, **counts(conn)}


def retention(dsn: str | None, *, dry_run: bool = False, batch_size: int | None = None) -> dict[str, Any]:
    """Archive, then delete, memberships that ended more than retention_days ago; batch by batch."""
    started = time.monotonic()
    with db.connection(dsn, autocommit=True) as conn:
        _require(conn)
        limit = batch_size or int(_setting(conn, "memberships.batch_size"))
        days = int(_setting(conn, "memberships.retention_days"))
        result: dict[str, Any] = {"retention_days": days, "dry_run": dry_run, "batches": 0, "rows_moved": 0}
        if dry_run:
            row = conn.execute("SELECT keyshift.memberships_retention_batch(0, true)").fetchone()
            assert row is not None
            result["rows_to_move"] = int(row[0])
        else:
            while True:
                with conn.transaction():
                    row = conn.execute("SELECT keyshift.memberships_retention_batch(%s)", (limit,)).fetchone()
                assert row is not None
                if row[0] == 0:
                    break
                result["batches"] += 1
                result["rows_moved"] += int(row[0])
        result.update(counts(conn))
    result["seconds"] = round(time.monotonic() - started, 3)
    return result
