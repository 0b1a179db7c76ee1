"""Alembic, as keyshift uses it: the configuration and the helpers revisions call.

Revisions in ``alembic/versions/`` stay small: they call :func:`set_timeouts`
first, then run SQL files from ``sql/`` and templates with inline parameters.
Nothing here reads data to decide what DDL to emit, so offline mode
(``alembic upgrade head --sql``) writes the same SQL that online mode runs.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql

from toolkit.errors import EXIT_USAGE, KeyshiftError, UsageError
from toolkit.render import render
from toolkit.resources import alembic_dir, sql_dir

CONTROL_SCHEMA = "keyshift"
VERSION_TABLE = "alembic_version"
DEFAULT_LOCK_TIMEOUT = "5s"
DEFAULT_STATEMENT_TIMEOUT = "15min"
_DURATION = re.compile(r"^\d+(\.\d+)?\s*(us|ms|s|min|h|d)?$")


def config(dsn: str | None = None, ini: Path | None = None) -> Config:
    """An Alembic Config for keyshift's revisions, optionally bound to a DSN."""
    cfg = Config(str(ini) if ini else None)
    cfg.set_main_option("script_location", str(alembic_dir()))
    if dsn is not None:
        cfg.attributes["dsn"] = dsn
    return cfg


def packaged_ini() -> Path:
    """The alembic.ini shipped with the revisions (works in a checkout and installed)."""
    return alembic_dir() / "alembic.ini"


def upgrade(dsn: str | None, revision: str = "head", *, sql_only: bool = False) -> None:
    command.upgrade(config(dsn), revision, sql=sql_only)


def downgrade(dsn: str | None, revision: str) -> None:
    command.downgrade(config(dsn), revision)


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


# ---------------------------------------------------------------- inside revisions


def x_arguments() -> dict[str, str]:
    """The ``-x key=value`` arguments of the running alembic command."""
    from alembic import context

    args: dict[str, str] = context.get_x_argument(as_dictionary=True)
    return args


def _duration(name: str, value: str) -> str:
    if not _DURATION.match(value.strip()):
        raise UsageError(f"-x {name}={value!r} is not a duration such as 5s, 500ms or 2min")
    return value.strip()


def timeouts() -> tuple[str, str]:
    """(lock_timeout, statement_timeout) from ``-x``, validated, or the defaults."""
    x = x_arguments()
    lock = _duration("lock_timeout", x.get("lock_timeout", DEFAULT_LOCK_TIMEOUT))
    stmt = _duration("statement_timeout", x.get("statement_timeout", DEFAULT_STATEMENT_TIMEOUT))
    return lock, stmt


def timeout_statements(local: bool) -> list[str]:
    """SET [LOCAL] lock_timeout / statement_timeout, values quoted as literals."""
    lock, stmt = timeouts()
    verb = "SET LOCAL {} = {}" if local else "SET {} = {}"
    return [
        sql.SQL(verb).format(sql.Identifier(name), sql.Literal(value)).as_string(None)
        for name, value in (("lock_timeout", lock), ("statement_timeout", stmt))
    ]


def set_timeouts() -> None:
    """First statement of every revision: a short lock_timeout and a statement_timeout.

    A revision whose DDL cannot get its lock fails after lock_timeout instead
    of queueing behind a long transaction while every later query on the
    table queues behind it. Configure with ``-x lock_timeout=10s``,
    ``-x statement_timeout=30min``. SET LOCAL: they end with the revision's
    transaction.
    """
    from alembic import op

    for statement in timeout_statements(local=True):
        op.execute(statement)


def execute_script(text: str, origin: str = "revision") -> None:
    """Run a validated script, one statement at a time (offline: each written out).

    A statement that cannot run inside a transaction (CREATE/DROP INDEX
    CONCURRENTLY) runs in an autocommit block: the revision's transaction is
    committed before it and a new one begun after it (offline: COMMIT ... BEGIN).
    The session-level timeouts set by env.py still apply to it.
    """
    from alembic import op

    from toolkit.parsing import needs_autocommit, validate

    for recorder in _RECORDERS:
        recorder.append((origin, text))
    for stmt in validate(text, origin=origin):
        if needs_autocommit(stmt):
            with op.get_context().autocommit_block():
                op.execute(verbatim(stmt.text))
        else:
            execute_retrying(stmt.text)


def verbatim(text: str) -> Any:
    """SQL for op.execute exactly as written.

    op.execute wraps a string in SQLAlchemy's text(), which reads ``:name`` as
    a bind parameter (a '10:30' literal or a jsonb '{"a":1}' would break);
    ``\\:`` is text()'s escape for a literal colon. Percent signs are doubled for
    the driver by SQLAlchemy online and left alone offline (named paramstyle).
    """
    import sqlalchemy

    return sqlalchemy.text(text.replace(":", "\\:"))


def run_sql_file(name: str) -> None:
    """Run ``sql/<name>`` statement by statement."""
    path = sql_dir() / name
    execute_script(path.read_text(encoding="utf-8"), origin=f"sql/{name}")


def run_template(template: str, **params: Any) -> None:
    """Render a template with the revision's inline parameters and run it."""
    execute_script(render(template, **params), origin=f"template {template}")


# ---------------------------------------------------------------- revision state


def current_revision(conn: Any) -> str | None:
    """The revision a database is at (None: not under keyshift's chain)."""
    row = conn.execute(
        "SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (f"{CONTROL_SCHEMA}.{VERSION_TABLE}",)
    ).fetchone()
    if not row or not row[0]:
        return None
    query = sql.SQL("SELECT version_num FROM {}.{}").format(
        sql.Identifier(CONTROL_SCHEMA), sql.Identifier(VERSION_TABLE)
    )
    heads = [r[0] for r in conn.execute(query).fetchall()]
    return heads[0] if heads else None


def require_revision(conn: Any, needed: str) -> str:
    """Refuse (exit 2) unless the database is at ``needed`` or a later revision."""
    current = current_revision(conn)
    scripts = script()
    if current is None:
        raise KeyshiftError(
            f"database is not under keyshift's revisions (no {CONTROL_SCHEMA}.{VERSION_TABLE}); "
            f"run 'alembic upgrade {needed}' (or stamp legacy_baseline first on an existing "
            "database)",
            EXIT_USAGE,
        )
    try:
        lineage = {r.revision for r in scripts.iterate_revisions(current, "base")}
    except Exception:  # unknown revision id in the database
        raise KeyshiftError(
            f"database is at revision {current!r}, which this keyshift does not know; "
            "upgrade keyshift or check the database",
            EXIT_USAGE,
        ) from None
    if needed not in lineage:
        raise KeyshiftError(
            f"database is at revision {current}, this needs {needed} or later; "
            f"run 'alembic upgrade {needed}'",
            EXIT_USAGE,
        )
    return current


# ---------------------------------------------------------------- recording what revisions run

# (origin, script) of every execute_script call while a recording is open:
# the linter maps the offline SQL of a revision back to its sql/ files and
# templates, and lints each template as the revisions render it.
_RECORDERS: list[list[tuple[str, str]]] = []


@contextmanager
def recording() -> Iterator[list[tuple[str, str]]]:
    """Collect the (origin, script) pairs execute_script runs inside the block."""
    scripts: list[tuple[str, str]] = []
    _RECORDERS.append(scripts)
    try:
        yield scripts
    finally:
        _RECORDERS.remove(scripts)


# ---------------------------------------------------------------- retrying DDL on lock timeout

DEFAULT_LOCK_RETRIES = 5
LOCK_NOT_AVAILABLE = "55P03"


def lock_retries() -> int:
    """Attempts per statement (``-x lock_retries=N``, 1 to 20; default 5)."""
    value = x_arguments().get("lock_retries", str(DEFAULT_LOCK_RETRIES))
    if not value.isdigit() or not 1 <= int(value) <= 20:
        raise UsageError(f"-x lock_retries={value!r} is not a number of attempts from 1 to 20")
    return int(value)


def backoff_seconds(attempt: int) -> float:
    """Jittered exponential backoff before attempt ``attempt + 1``: 0.25 s doubling, capped at 8 s."""
    import random

    return float(min(8.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def execute_retrying(text: str) -> None:
    """Run one statement of a revision; on a lock timeout, retry it with jittered backoff.

    Online, each attempt runs under a SAVEPOINT, so a timed-out attempt rolls
    back to it and the revision's transaction goes on; every attempt, the last
    one too, runs with the revision's lock_timeout set again first, so no
    attempt can wait for its lock without bound. The revision's earlier
    statements keep their locks while it waits: keep the DDL of a revision on
    busy tables short. Offline (``--sql``), the statement is written once:
    retrying is the job of whoever runs the script.
    """
    import time

    import sqlalchemy
    from alembic import op

    if op.get_context().as_sql:
        op.execute(verbatim(text))
        return
    attempts = lock_retries()
    lock_timeout = timeouts()[0]
    bind = op.get_bind()
    for attempt in range(1, attempts + 1):
        try:
            with bind.begin_nested():
                bind.exec_driver_sql(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)).as_string(None)
                )
                op.execute(verbatim(text))
            return
        except sqlalchemy.exc.OperationalError as exc:
            state = getattr(getattr(exc.orig, "diag", None), "sqlstate", None)
            if state != LOCK_NOT_AVAILABLE or attempt == attempts:
                raise
            time.sleep(backoff_seconds(attempt))


# ---------------------------------------------------------------- a revision's offline SQL


@dataclass(frozen=True)
class RevisionSql:
    revision: str
    path: str  # the revision's file, relative to the repository
    sql: str  # what `alembic upgrade down:rev --sql` writes
    recorded: list[tuple[str, str]]  # (origin, script) of every sql file and template it ran


def revision_sql(revision: str) -> RevisionSql:
    """The offline SQL of one revision, and the scripts it rendered."""
    scripts = script()
    rev = scripts.get_revision(revision)
    if rev is None:
        raise UsageError(f"no revision {revision!r}")
    down = rev.down_revision
    target = f"{down}:{rev.revision}" if isinstance(down, str) else rev.revision
    cfg = config()
    buffer = io.StringIO()
    cfg.output_buffer = buffer
    with recording() as recorded:
        command.upgrade(cfg, target, sql=True)
    path = Path(rev.path).relative_to(alembic_dir().parent).as_posix()
    return RevisionSql(rev.revision, path, buffer.getvalue(), list(recorded))


def chain() -> list[str]:
    """The revisions from base to head."""
    return [r.revision for r in reversed(list(script().walk_revisions("base", "heads")))]
