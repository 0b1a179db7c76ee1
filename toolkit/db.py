"""Finding and connecting to the database, the way Postgres users expect.

Order: the ``--dsn`` option, else ``DATABASE_URL``, else libpq's own
environment (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE``,
``PGPASSWORD``, ``PGSERVICE`` and service files), which libpq reads when the
conninfo string is empty. A password never reaches output: every message
that names the target goes through :func:`describe_target`.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from toolkit.errors import EXIT_USAGE, KeyshiftError, UsageError

# SQLAlchemy-style URLs name a driver (postgresql+psycopg://); libpq does not.
_DRIVER_SUFFIX = re.compile(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", re.IGNORECASE)
CONNECT_TIMEOUT_S = 10


def resolve_dsn(dsn: str | None = None) -> str:
    """The conninfo to use: ``dsn`` if given, else $DATABASE_URL, else "" (libpq env)."""
    value = dsn if dsn else os.environ.get("DATABASE_URL", "")
    value = _DRIVER_SUFFIX.sub(r"\1://", value.strip())
    try:
        conninfo_to_dict(value)
    except psycopg.ProgrammingError:
        # The text may hold a password: describe where it came from, not what it is.
        origin = "--dsn" if dsn else "DATABASE_URL"
        raise UsageError(
            f"the connection string given by {origin} is not valid conninfo or a "
            "postgresql:// URL; fix it (e.g. postgresql://user@host:5432/dbname)"
        ) from None
    return value


def conninfo_params(dsn: str) -> dict[str, Any]:
    """The explicit parameters of a conninfo string (libpq env not applied)."""
    return dict(conninfo_to_dict(dsn))


def describe_target(dsn: str) -> str:
    """host/port/dbname/user of a conninfo, with libpq's environment applied; no password."""
    params = conninfo_params(dsn)
    env = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER"}
    parts = []
    for key, var in env.items():
        value = params.get(key) or os.environ.get(var)
        if value:
            parts.append(f"{key}={value}")
    return " ".join(parts) or "the libpq defaults (local socket)"


def mask_password(text: str, dsn: str) -> str:
    """``text`` with the password of ``dsn`` (and of PGPASSWORD) replaced by ***."""
    secrets = {conninfo_params(dsn).get("password"), os.environ.get("PGPASSWORD")}
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def with_database(dsn: str, dbname: str) -> str:
    """The same conninfo pointed at another database."""
    return make_conninfo(dsn, dbname=dbname)


def connect_error(exc: psycopg.Error, dsn: str) -> KeyshiftError:
    """One clear line for a failed connection (exit 2), password masked."""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "unknown error")
    first = first.removeprefix("connection failed: ")
    message = (
        f"cannot connect to {describe_target(dsn)}: {first}; check --dsn, "
        "DATABASE_URL or the PG* variables and that the server is running"
    )
    return KeyshiftError(mask_password(message, dsn), EXIT_USAGE)


def application_name() -> str:
    """Shown in pg_stat_activity and the audit log: who runs keyshift."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"keyshift ({user})"[:63]


def connect(dsn: str | None = None, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection found the usual way; failure is a KeyshiftError with exit 2."""
    conninfo = resolve_dsn(dsn)
    params = conninfo_params(conninfo)
    extra: dict[str, Any] = {}
    if "application_name" not in params and not os.environ.get("PGAPPNAME"):
        extra["application_name"] = application_name()
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        return psycopg.connect(conninfo, autocommit=autocommit, **extra)
    except psycopg.OperationalError as exc:
        raise connect_error(exc, conninfo) from None


@contextmanager
def connection(dsn: str | None = None, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """:func:`connect` as a context manager that always closes."""
    conn = connect(dsn, autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()


def describe_pg_error(exc: psycopg.Error) -> str:
    """One line for a server error: message, detail and hint, with the SQLSTATE."""
    diag = exc.diag
    text = str(exc).strip()
    primary = diag.message_primary or (text.splitlines()[0] if text else type(exc).__name__)
    parts = [primary]
    if diag.message_detail:
        parts.append(diag.message_detail)
    if diag.message_hint:
        parts.append(f"hint: {diag.message_hint}")
    line = "; ".join(p.strip() for p in parts if p)
    if diag.sqlstate:
        line += f" (SQLSTATE {diag.sqlstate})"
    return " ".join(line.split())


# Connection exceptions (class 08) and the server ending the session
# (pg_terminate_backend, shutdown). Other "operational" errors such as
# lock_not_available or object_not_in_prerequisite_state are ordinary failures.
_CONNECTION_LOSS = ("57P01", "57P02", "57P03")


def is_connection_loss(exc: psycopg.Error) -> bool:
    state = exc.diag.sqlstate if exc.diag else None
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith("08") or state in _CONNECTION_LOSS


# libpq variables that name a server or a database (PGPASSWORD alone names none).
_TARGET_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


def is_configured(dsn: str | None = None) -> bool:
    """Whether a database is named: --dsn, DATABASE_URL, or libpq's PG* variables."""
    return bool(dsn or os.environ.get("DATABASE_URL") or any(os.environ.get(v) for v in _TARGET_VARIABLES))
