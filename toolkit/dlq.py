"""Dead letters: list them, retry them through their source's SQL path, resolve them by hand.

The rules (attempt counting, giving up after the source's retry_attempts,
the audit entry of a manual resolution) are in SQL:
keyshift.retry_dead_letter and keyshift.resolve_dead_letter.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from toolkit import db
from toolkit.control import require_control_schema
from toolkit.errors import UsageError

COLUMNS = (
    "id",
    "source",
    "operation",
    "row_identity",
    "reason",
    "attempts",
    "first_seen",
    "last_error",
    "resolved_at",
    "resolution_note",
)


def list_letters(
    dsn: str | None, sources: tuple[str, ...] = (), include_resolved: bool = False, limit: int = 1000
) -> list[dict[str, Any]]:
    with db.connection(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        require_control_schema(conn)
        cur.execute(
            "SELECT id, source, operation, row_identity, reason, attempts, first_seen, last_error,"
            " resolved_at, resolution_note FROM keyshift.dead_letters"
            " WHERE (cardinality(%s::text[]) = 0 OR source = ANY(%s::text[]))"
            "   AND (%s OR resolved_at IS NULL)"
            " ORDER BY id LIMIT %s",
            (list(sources), list(sources), include_resolved, limit),
        )
        return list(cur.fetchall())


def retry(
    dsn: str | None, ids: tuple[int, ...] = (), retry_all: bool = False, sources: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Retry the given letters (or every open one): each in its own transaction."""
    if bool(ids) == retry_all:
        raise UsageError("give --id ID (repeatable) or --all")
    results = []
    with db.connection(dsn, autocommit=True) as conn:
        require_control_schema(conn)
        if retry_all:
            ids = tuple(r["id"] for r in list_letters(dsn, sources, limit=1_000_000))
        for letter_id in ids:
            try:
                with conn.transaction():
                    row = conn.execute("SELECT keyshift.retry_dead_letter(%s)", (letter_id,)).fetchone()
            except psycopg.errors.UndefinedObject as exc:
                raise UsageError(db.describe_pg_error(exc)) from None
            assert row is not None
            results.append({"id": letter_id, "outcome": row[0]})
    return results


def resolve(dsn: str | None, letter_id: int, note: str) -> dict[str, Any]:
    with db.connection(dsn, autocommit=True) as conn:
        require_control_schema(conn)
        try:
            conn.execute("SELECT keyshift.resolve_dead_letter(%s, %s)", (letter_id, note))
        except (psycopg.errors.UndefinedObject, psycopg.errors.InvalidParameterValue) as exc:
            raise UsageError(db.describe_pg_error(exc)) from None
    return {"id": letter_id, "resolved": True, "note": note}
