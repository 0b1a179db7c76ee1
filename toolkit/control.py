"""Reading and changing the control schema ``keyshift``: settings, tables, audit.

The database is the source of truth for migration state; these functions
only query it and call its functions (``keyshift.set_setting`` ...), so the
rules (validation, audit log) live in SQL, where every client gets them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from toolkit.errors import EXIT_USAGE, KeyshiftError, UsageError
from toolkit.migrate import CONTROL_SCHEMA, current_revision


def query_rows(
    conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return list(cur.fetchall())


def require_control_schema(conn: psycopg.Connection[Any]) -> str:
    """The database's revision; exit 2 with what to do when the control schema is absent."""
    revision = current_revision(conn)
    present = conn.execute("SELECT pg_catalog.to_regclass('keyshift.settings') IS NOT NULL").fetchone()
    if revision is None or not present or not present[0]:
        raise KeyshiftError(
            f"database has no keyshift control schema (revision: {revision or 'none'}); "
            "run 'alembic upgrade head' (on a database that already has the legacy "
            "tables, 'alembic stamp legacy_baseline' first)",
            EXIT_USAGE,
        )
    return revision


@contextmanager
def read_snapshot(conn: psycopg.Connection[Any]) -> Iterator[str]:
    """One READ ONLY, REPEATABLE READ transaction on an idle connection; yields the revision."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield require_control_schema(conn)


def settings(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return query_rows(
        conn,
        "SELECT key, value, kind, allowed, description, updated_at, updated_by "
        "FROM keyshift.settings ORDER BY key",
    )


def get_setting(conn: psycopg.Connection[Any], key: str) -> dict[str, Any]:
    rows = query_rows(
        conn,
        "SELECT key, value, kind, allowed, description, updated_at, updated_by "
        "FROM keyshift.settings WHERE key = %s",
        (key,),
    )
    if not rows:
        known = ", ".join(r["key"] for r in settings(conn)) or "none"
        raise UsageError(f"unknown setting {key!r}; known settings: {known}")
    return rows[0]


def set_setting(conn: psycopg.Connection[Any], key: str, value: str, reason: str) -> dict[str, Any]:
    """Change a setting through keyshift.set_setting (validated, audit-logged); returns old and new."""
    old = get_setting(conn, key)
    if not reason or not reason.strip():
        raise UsageError(f"changing {key} needs a reason: --reason TEXT")
    with conn.transaction():
        row = query_rows(
            conn, "SELECT key, value FROM keyshift.set_setting(%s, %s, %s)", (key, value, reason)
        )
    return {"key": key, "old": old["value"], "new": row[0]["value"], "reason": reason}


def migrated_tables(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Each table's phase, backfill progress and token-only writes since it left dual."""
    if not exists(conn, "keyshift.token_usage"):
        return query_rows(
            conn,
            "SELECT table_schema, table_name, phase, validation_mode, key_only_token_writes, "
            "phase_changed_at FROM keyshift.migrated_tables ORDER BY table_schema, table_name",
        )
    return query_rows(
        conn,
        """
        SELECT t.table_schema, t.table_name, t.phase, t.validation_mode, t.key_only_token_writes,
               t.phase_changed_at, b.status AS backfill, b.rows_updated AS backfilled,
               b.rows_estimate AS backfill_estimate, b.rows_dead_lettered AS backfill_dead_lettered,
               (SELECT count(*) FROM keyshift.token_usage u
                 WHERE u.table_schema = t.table_schema AND u.table_name = t.table_name
                   AND u.at >= t.phase_changed_at AND t.phase IN ('key_primary', 'key_only'))
                   AS token_only_writes
          FROM keyshift.migrated_tables t
          LEFT JOIN keyshift.backfill_state b USING (table_schema, table_name)
         ORDER BY t.table_schema, t.table_name
        """,
    )


def exists(conn: psycopg.Connection[Any], relation: str) -> bool:
    row = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (relation,)).fetchone()
    return bool(row and row[0])


def open_dead_letters(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return query_rows(
        conn,
        "SELECT source, count(*) AS open FROM keyshift.dead_letters "
        "WHERE resolved_at IS NULL GROUP BY source ORDER BY source",
    )


def relocations(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Each relocation's step and, once switched, the soak time left (revision dxy_relocation)."""
    if not exists(conn, "keyshift.relocations"):
        return []
    return query_rows(
        conn,
        "SELECT r.name, r.step, r.source, r.target, r.switched_at,"
        " CASE WHEN r.switched_at IS NOT NULL AND r.step IN ('switched', 'cleaning', 'cleaned') THEN"
        "   pg_catalog.date_trunc('second', GREATEST(r.switched_at"
        "     + keyshift.setting(r.soak_setting)::interval - pg_catalog.now(), interval '0'))::text"
        " END AS soak_left"
        " FROM keyshift.relocations r ORDER BY r.name",
    )


def last_reconciliations(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The latest run of every reconciled pair: verdict, match ratio and when."""
    return query_rows(
        conn,
        "SELECT DISTINCT ON (pair) pair, verdict, match_ratio, rows_source, rows_target, finished_at"
        " FROM keyshift.reconcile_runs ORDER BY pair, id DESC",
    )


def status(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything the control schema says about the migration, for `keyshift status`."""
    revision = require_control_schema(conn)
    return {
        "database": conn.info.dbname,
        "revision": revision,
        "control_schema": CONTROL_SCHEMA,
        "tables": migrated_tables(conn),
        "settings": settings(conn),
        "dead_letters": open_dead_letters(conn),
        "relocations": relocations(conn),
        "reconciliations": last_reconciliations(conn),
    }
