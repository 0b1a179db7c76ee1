"""Alembic environment for keyshift's revisions.

The database is found like every keyshift command finds it: the ``dsn``
attribute set by the caller, else ``-x dsn=...``, else ``sqlalchemy.url`` in
the ini file, else ``DATABASE_URL``, else libpq's environment (PGHOST ...,
service files). The version table lives in the control schema ``keyshift``;
each revision runs in its own transaction (transaction_per_migration).
"""

from __future__ import annotations

import sys
from logging.config import fileConfig

import psycopg
import sqlalchemy
from alembic import context
from sqlalchemy.pool import NullPool

from toolkit import db, migrate
from toolkit.errors import KeyshiftError
from toolkit.migrate import CONTROL_SCHEMA, VERSION_TABLE

config = context.config
if config.config_file_name and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

COMMON = dict(
    version_table=VERSION_TABLE,
    version_table_schema=CONTROL_SCHEMA,
    transaction_per_migration=True,
    # alembic's own comparison hooks are for autogenerate, which keyshift does not use.
)


def _dsn() -> str | None:
    explicit = config.attributes.get("dsn") or context.get_x_argument(as_dictionary=True).get("dsn")
    if explicit:
        return str(explicit)
    url = config.get_main_option("sqlalchemy.url")
    return url or None


def _fail(err: KeyshiftError) -> None:
    """One line and exit 2 under the alembic command line; the error itself otherwise."""
    if getattr(config, "cmd_opts", None) is not None:
        sys.stderr.write(f"alembic: error: {err.message}\n")
        raise SystemExit(err.exit_code)
    raise err


def _moves_version() -> bool:
    """upgrade, downgrade and stamp have a destination; current, check do not."""
    try:
        return context.get_revision_argument() is not None
    except KeyError:
        return False


def run_migrations_offline() -> None:
    """Write the SQL a DBA reviews and runs with psql -v ON_ERROR_STOP=1 -f plan.sql."""
    # paramstyle "named": a % in the SQL (RAISE '... %', format('%I')) is
    # written as is, not doubled for a pyformat driver that is not there.
    try:
        migrate.timeouts()  # validate -x values before writing anything
    except KeyshiftError as err:
        _fail(err)
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **COMMON,
    )
    # Session-level timeouts first: statements that run outside a revision's
    # transaction (CREATE INDEX CONCURRENTLY) get them too. The version table
    # lives in the control schema, so the schema comes next.
    for statement in migrate.timeout_statements(local=False):
        context.execute(statement)
    context.execute(f"CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA}")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    try:
        conninfo = db.resolve_dsn(_dsn())
        session_timeouts = migrate.timeout_statements(local=False)
    except KeyshiftError as err:
        _fail(err)
        return

    def creator() -> psycopg.Connection:
        try:
            return db.connect(conninfo)
        except KeyshiftError as err:
            _fail(err)
            raise

    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)
    with engine.connect() as connection:
        # alembic's own reads and writes of the version table get the same
        # timeouts as the revisions (which repeat them with SET LOCAL).
        for statement in session_timeouts:
            connection.exec_driver_sql(statement)
        connection.commit()
        if _moves_version():
            # Commands that move the version (upgrade, downgrade, stamp) need
            # the schema that holds the version table; read-only ones do not.
            connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA}")
            connection.commit()
        context.configure(connection=connection, **COMMON)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
