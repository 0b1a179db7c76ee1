"""A revision took a stronger lock on an existing table than its declared budget (lint --trace-locks).

Anti-pattern: a revision that takes ACCESS EXCLUSIVE on a busy table (or
rewrites it) stops every query on it for as long as it runs.
Best practice: declare ``LOCK_BUDGET = "SHARE ROW EXCLUSIVE"`` (the
strongest lock the revision may take on tables that existed before it) in
the revision, and let ``keyshift lint --trace-locks`` hold it to that on a
real Postgres: the locks are read from pg_locks, rewrites from relfilenode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.lint_rules import Rule
from toolkit.migrate import RevisionSql, chain, revision_sql, script
from toolkit.parsing import LOCK_MODES, code_line, excerpt, needs_autocommit, statements, table_locks

RULE = Rule(
    id="lock_budget",
    severity="error",
    message="a revision took a lock on an existing table stronger than its LOCK_BUDGET, or rewrote it",
    hint="split the revision into online-safe steps, or raise LOCK_BUDGET with the reason in the revision",
)


# ---------------------------------------------------------------- the check, on a real Postgres


@dataclass
class RevisionTrace:
    """The table locks a revision took on tables that existed before it, and its rewrites."""

    revision: str
    path: str  # the revision's file
    budget: str | None
    locks: list[dict[str, Any]] = field(default_factory=list)  # statement line, table, mode
    unobserved: list[dict[str, Any]] = field(default_factory=list)  # outside a transaction
    rewritten: list[str] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)  # over the budget

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_TABLES = (
    "SELECT c.oid, n.nspname || '.' || c.relname, c.relfilenode"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname NOT LIKE 'pg\\_toast%'"
)
_MY_LOCKS = (
    "SELECT relation, mode FROM pg_catalog.pg_locks"
    " WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'relation' AND granted"
)


def _mode_name(lock: str) -> str:
    """'ShareRowExclusiveLock' -> 'SHARE ROW EXCLUSIVE'."""
    for mode in LOCK_MODES:
        if mode.title().replace(" ", "") + "Lock" == lock:
            return mode
    return lock


def _budget(revision: str) -> str | None:
    module = script().get_revision(revision).module
    budget = getattr(module, "LOCK_BUDGET", None)
    return str(budget) if budget else None


def trace_revision(conn: Any, rendered: RevisionSql, budget: str | None = None) -> RevisionTrace:
    """Apply one revision's offline SQL statement by statement; watch pg_locks and relfilenode.

    Locks are read from this session's own pg_locks rows after each statement
    inside a transaction (they are held to its end); a statement run outside a
    transaction (CREATE INDEX CONCURRENTLY) has released its lock by then, so
    the lock model's expectation is reported for it, marked unobserved.
    ``budget`` defaults to the revision's LOCK_BUDGET.
    """
    from psycopg import pq

    trace = RevisionTrace(rendered.revision, rendered.path, budget or _budget(rendered.revision))
    before = {oid: (name, node) for oid, name, node in conn.execute(_TABLES).fetchall()}
    existing = {name for name, _ in before.values()}
    held: set[tuple[int, str]] = set()
    for stmt in statements(rendered.sql, rendered.path):
        conn.execute(stmt.text)
        line = code_line(stmt.text, stmt.line)
        if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
            held = set()
            if needs_autocommit(stmt):
                for expected in table_locks(stmt.node):
                    # An unqualified name is taken as the one existing table of that name.
                    named = [n for n in existing if expected.table in (n, n.split(".", 1)[1])]
                    if len(named) == 1:
                        trace.unobserved.append(
                            {
                                "line": line,
                                "table": named[0],
                                "mode": expected.mode,
                                "statement": excerpt(stmt.text),
                            }
                        )
            continue
        now = {
            (int(rel), _mode_name(mode))
            for rel, mode in conn.execute(_MY_LOCKS).fetchall()
            if rel is not None
        }
        strongest: dict[int, str] = {}
        for rel, mode in now - held:
            if rel in before and LOCK_MODES.index(mode) >= LOCK_MODES.index(strongest.get(rel, mode)):
                strongest[rel] = mode
        for rel, mode in sorted(strongest.items(), key=lambda item: before[item[0]][0]):
            trace.locks.append(
                {"line": line, "table": before[rel][0], "mode": mode, "statement": excerpt(stmt.text)}
            )
        held = now
    after = {oid: node for oid, _, node in conn.execute(_TABLES).fetchall()}
    trace.rewritten = sorted(
        name for oid, (name, node) in before.items() if oid in after and after[oid] != node
    )
    if trace.budget:
        limit = LOCK_MODES.index(trace.budget)
        for lock in trace.locks + trace.unobserved:
            if LOCK_MODES.index(lock["mode"]) > limit:
                detail = f"{lock['mode']} on {lock['table']} exceeds LOCK_BUDGET {trace.budget}"
                trace.violations.append(
                    {"line": lock["line"], "statement": lock["statement"], "detail": detail}
                )
        for table in trace.rewritten:
            detail = f"rewrote {table} (relfilenode changed)"
            trace.violations.append({"line": 0, "statement": "", "detail": detail})
    return trace


def trace_locks(dsn: str | None, only: set[str] | None = None) -> list[RevisionTrace]:
    """Apply the chain to a throwaway database (created and dropped here), revision by revision."""
    import os
    import secrets

    from psycopg import sql as psql

    from toolkit import db

    conninfo = db.resolve_dsn(dsn)
    name = f"keyshift_lint_{os.getpid()}_{secrets.token_hex(4)}"
    traces = []
    with db.connection(conninfo, autocommit=True) as admin:
        admin.execute(psql.SQL("CREATE DATABASE {}").format(psql.Identifier(name)))
        try:
            with db.connection(db.with_database(conninfo, name), autocommit=True) as conn:
                for revision in chain():
                    trace = trace_revision(conn, revision_sql(revision))
                    if only is None or revision in only:
                        traces.append(trace)
        finally:
            admin.execute(psql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psql.Identifier(name)))
    return traces
