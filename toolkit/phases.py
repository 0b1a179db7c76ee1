"""Moving a token table between phases: token_only -> dual -> key_primary -> key_only.

The moves that change the catalog (dual <-> key_primary) render
``sql/templates/key_primary.sql.j2`` (or ``key_primary_revert.sql.j2``), the
same SQL revision key_primary_contract applies, and run it statement by
statement: CONCURRENTLY statements outside a transaction, every other one in
its own short transaction with a lock_timeout, retried with jittered backoff
when the lock is busy. The last statement moves the phase through
``keyshift.set_phase``, which checks the preconditions and writes the audit
log. The other moves are that function alone.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from pglast import ast, enums
from psycopg import sql

from toolkit import db
from toolkit.control import require_control_schema
from toolkit.errors import UsageError
from toolkit.parsing import Statement, needs_autocommit, plpgsql_statements, statements
from toolkit.render import render

PHASES = ("token_only", "dual", "key_primary", "key_only")
LOCK_TIMEOUT = "2s"
LOCK_RETRIES = 6


@dataclass(frozen=True)
class Step:
    """One statement of a phase move, with the lock it takes."""

    sql: str
    lock: str
    transaction: bool  # False: runs outside a transaction (CONCURRENTLY)


def parse_table(name: str) -> tuple[str, str]:
    """SCHEMA.TABLE as given on the command line (no quoting needed or allowed)."""
    schema, dot, table = name.partition(".")
    if not dot or not schema or not table or "." in table:
        raise UsageError(f"table {name!r} is not SCHEMA.TABLE (e.g. market.data_bars)")
    return schema, table


def table_config(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, Any]:
    """The table's row in keyshift.migrated_tables, or a usage error listing the tables."""
    require_control_schema(conn)
    if conn.execute("SELECT pg_catalog.to_regclass('keyshift.migrated_tables') IS NULL").fetchone() == (
        True,
    ):
        raise UsageError("this database has no tables under migration (revision key_columns not applied)")
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM keyshift.migrated_tables WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        ).fetchone()
        if row is None:
            known = [
                f"{r['table_schema']}.{r['table_name']}"
                for r in cur.execute("SELECT table_schema, table_name FROM keyshift.migrated_tables")
            ]
            if not known:
                raise UsageError(
                    f"{schema}.{table} is not under migration; no table is under migration yet: "
                    "run 'alembic upgrade key_columns'"
                )
            raise UsageError(
                f"{schema}.{table} is not under migration; tables under migration: {', '.join(sorted(known))}"
            )
    return dict(row)


def template_params(config: dict[str, Any], reason: str) -> dict[str, Any]:
    identity = list(config["identity_columns"])
    return {
        "schema": config["table_schema"],
        "table": config["table_name"],
        "token_column": config["token_column"],
        "key_column": config["key_column"],
        "token_identity_columns": identity if config["token_column"] in identity else None,
        "key_identity_columns": config["key_identity_columns"],
        "reason": reason,
    }


_ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE for an instant (catalog change; waits at most lock_timeout)"
_VALIDATE = "SHARE UPDATE EXCLUSIVE (validation scan: reads and writes go on)"
_READ = "ACCESS SHARE (reads only: writes go on)"


def _lock_of(node: Any) -> str:
    if isinstance(node, ast.IndexStmt):
        return "SHARE UPDATE EXCLUSIVE (concurrent build: reads and writes go on)"
    if isinstance(node, ast.DropStmt) and node.concurrent:
        return "SHARE UPDATE EXCLUSIVE (concurrent drop)"
    if isinstance(node, ast.SelectStmt):
        return _READ
    if isinstance(node, ast.AlterTableStmt) and all(
        cmd.subtype == enums.AlterTableType.AT_ValidateConstraint for cmd in node.cmds or ()
    ):
        return _VALIDATE
    return _ACCESS_EXCLUSIVE


def describe_lock(stmt: Statement) -> str:
    """The heaviest table lock a phase statement takes (PostgreSQL 15).

    For a DO block, the static statements of its body decide; a body with only
    dynamic SQL (EXECUTE) is taken to change the catalog.
    """
    if not isinstance(stmt.node, ast.DoStmt):
        return _lock_of(stmt.node)
    inner = [
        _lock_of(s.node)
        for embedded in plpgsql_statements(stmt)
        for s in statements(embedded.text, origin="DO block")
    ]
    for lock in (_ACCESS_EXCLUSIVE, _VALIDATE, _READ):
        if lock in inner:
            return lock
    return _ACCESS_EXCLUSIVE


def plan(conn: psycopg.Connection[Any], table: str, target: str, reason: str) -> list[Step]:
    """The statements that move ``table`` to ``target``, in order."""
    if target not in PHASES:
        raise UsageError(f"unknown phase {target!r}; phases are {', '.join(PHASES)}")
    schema, name = parse_table(table)
    config = table_config(conn, schema, name)
    current = config["phase"]
    if abs(PHASES.index(target) - PHASES.index(current)) > 1:
        raise UsageError(f"{table} is in phase {current}: move one phase at a time ({' -> '.join(PHASES)})")
    template = {
        ("dual", "key_primary"): "key_primary",
        ("key_primary", "dual"): "key_primary_revert",
    }.get((current, target))
    if template is None:
        text = (
            sql.SQL("SELECT keyshift.set_phase({}, {}, {}, {})")
            .format(sql.Literal(schema), sql.Literal(name), sql.Literal(target), sql.Literal(reason))
            .as_string(None)
        )
        return [Step(text + ";", "ROW EXCLUSIVE on keyshift.migrated_tables only", True)]
    rendered = render(template, **template_params(config, reason))
    return [
        Step(s.text + ";", describe_lock(s), not needs_autocommit(s))
        for s in statements(rendered, origin=template)
    ]


def _run_step(conn: psycopg.Connection[Any], step: Step) -> int:
    """Run one statement; retry a busy lock with jittered backoff. Returns attempts."""
    for attempt in range(1, LOCK_RETRIES + 1):
        try:
            if step.transaction:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                    conn.execute(step.sql)
            else:
                # Outside a transaction: the session's lock_timeout applies.
                conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                conn.execute(step.sql)
            return attempt
        except psycopg.errors.LockNotAvailable:
            if attempt == LOCK_RETRIES:
                raise
            time.sleep(min(8.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


def change_phase(
    dsn: str | None, table: str, target: str, reason: str, *, dry_run: bool = False
) -> dict[str, Any]:
    """Move a table to an adjacent phase; with dry_run, only say what would run."""
    if not reason or not reason.strip():
        raise UsageError("a phase change needs a reason: --reason TEXT")
    with db.connection(dsn, autocommit=True) as conn:
        steps = plan(conn, table, target, reason)
        schema, name = parse_table(table)
        before = table_config(conn, schema, name)["phase"]
        result: dict[str, Any] = {
            "table": table,
            "from": before,
            "to": target,
            "dry_run": dry_run,
            "steps": [asdict(s) for s in steps],
        }
        if dry_run or before == target:
            return result
        timings = []
        for step in steps:
            started = time.monotonic()
            attempts = _run_step(conn, step)
            timings.append({"seconds": round(time.monotonic() - started, 3), "attempts": attempts})
        for entry, timing in zip(result["steps"], timings, strict=True):
            entry.update(timing)
        result["phase"] = table_config(conn, schema, name)["phase"]
    return result
