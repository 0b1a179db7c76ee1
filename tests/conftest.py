"""Test fixtures: a real Postgres, a fresh database per test.

Which server:
1. the one the environment names (``KEYSHIFT_TEST_DSN``, ``DATABASE_URL`` or
   the libpq ``PG*`` variables), if any is set;
2. else the local server on 127.0.0.1:5432 (user postgres) if it answers;
3. else a throwaway cluster that pytest-postgresql starts from the local
   Postgres binaries (``pg_ctl``). Postgres refuses to run as root, so that
   path fails with a clear message when the tests run as root.
A missing server is a failure, never a skip.

Each test gets its own database, created by pytest-postgresql's
DatabaseJanitor from a template database migrated once per session to the
revision the test asks for, so the suite stays fast. Names carry the pid so
that concurrent runs on one server never collide.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql
from pytest_postgresql import factories
from pytest_postgresql.janitor import DatabaseJanitor

from toolkit import migrate
from toolkit.cli import main as cli_main

PID = os.getpid()
PREFIX = "ks_t"
_ENV_VARS = ("KEYSHIFT_TEST_DSN", "DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGSERVICE")

# Only used on path 3; its executable comes from pg_config / the PATH.
postgresql_proc = factories.postgresql_proc(port=None)


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str | None

    def dsn(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=dbname,
            **({"password": self.password} if self.password else {}),
        )


def _from_conn(conn: psycopg.Connection[Any]) -> Server:
    info = conn.info
    return Server(info.host, int(info.port), info.user, info.password or None)


def _environment_server() -> Server | None:
    if not any(os.environ.get(v) for v in _ENV_VARS):
        return None
    dsn = os.environ.get("KEYSHIFT_TEST_DSN") or os.environ.get("DATABASE_URL") or ""
    dsn = re.sub(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", r"\1://", dsn)
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return _from_conn(conn)


def _local_server() -> Server | None:
    try:
        with psycopg.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        ) as conn:
            return _from_conn(conn)
    except psycopg.OperationalError:
        return None


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Server:
    """The Postgres server the tests run against (see the module docstring)."""
    server = _environment_server() or _local_server()
    if server is not None:
        return server
    if os.geteuid() == 0:
        pytest.fail(
            "no Postgres server: none named by KEYSHIFT_TEST_DSN/DATABASE_URL/PG*, none on "
            "127.0.0.1:5432, and pytest-postgresql cannot start one as root (Postgres refuses "
            "to run as root). Start a server or run the tests as an unprivileged user.",
            pytrace=False,
        )
    proc = request.getfixturevalue("postgresql_proc")
    return Server(proc.host, int(proc.port), proc.user, proc.password or None)


def _sweep_stale(server: Server) -> None:
    """Drop databases left by test runs whose process is gone (a killed run)."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (PREFIX + "\\_%",))
        ]
        for name in names:
            match = re.match(rf"^{PREFIX}_(\d+)_", name)
            if not match or int(match.group(1)) == PID:
                continue
            try:
                os.kill(int(match.group(1)), 0)
                continue  # that run is alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class Databases:
    """Creates databases (empty or cloned from a migrated template) and drops them."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.counter = 0
        self.templates: dict[str, DatabaseJanitor] = {}

    def _janitor(
        self, dbname: str, template: str | None = None, as_template: bool = False
    ) -> DatabaseJanitor:
        return DatabaseJanitor(
            user=self.server.user,
            host=self.server.host,
            port=self.server.port,
            password=self.server.password,
            dbname=dbname,
            template_dbname=template,
            as_template=as_template,
        )

    def next_name(self, kind: str) -> str:
        self.counter += 1
        return f"{PREFIX}_{PID}_{kind}{self.counter}"

    def template(self, revision: str) -> str:
        """A template database migrated to ``revision`` (made once per session)."""
        if revision not in self.templates:
            name = f"{PREFIX}_{PID}_tpl_{re.sub(r'[^a-z0-9]', '_', revision.lower())}"
            janitor = self._janitor(name, as_template=True)
            janitor.drop()
            janitor.init()
            migrate.upgrade(self.server.dsn(name), revision)
            self.templates[revision] = janitor
        return self.templates[revision].dbname

    def create(self, revision: str | None = None) -> DatabaseJanitor:
        template = self.template(revision) if revision else None
        janitor = self._janitor(self.next_name("db"), template=template)
        janitor.init()
        return janitor

    def close(self) -> None:
        for janitor in self.templates.values():
            janitor.drop()


@pytest.fixture(scope="session")
def databases(pg_server: Server) -> Iterator[Databases]:
    _sweep_stale(pg_server)
    dbs = Databases(pg_server)
    yield dbs
    dbs.close()


@pytest.fixture
def new_db(databases: Databases) -> Iterator[Callable[..., str]]:
    """Factory: a fresh database (empty, or at a revision); returns its DSN. Dropped after the test."""
    made: list[DatabaseJanitor] = []

    def make(revision: str | None = None) -> str:
        janitor = databases.create(revision)
        made.append(janitor)
        return databases.server.dsn(janitor.dbname)

    yield make
    for janitor in made:
        janitor.drop()


@pytest.fixture
def empty_dsn(new_db: Callable[..., str]) -> str:
    return new_db()


@pytest.fixture
def head_dsn(new_db: Callable[..., str]) -> str:
    """DSN of a fresh database at the head revision."""
    return new_db("head")


@pytest.fixture
def head_conn(head_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """Autocommit connection to a fresh database at head."""
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Run the keyshift CLI in-process: cli("status", "--json", dsn=...)."""

    def run(*args: str, dsn: str | None = None, input: str | None = None) -> Result:
        argv = list(args)
        if dsn is not None:
            argv += ["--dsn", dsn]
        return CliRunner().invoke(cli_main, argv, input=input, catch_exceptions=False)

    return run


def schema_dump(dsn: str) -> str:
    """pg_dump --schema-only of a database, for comparing catalogs."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", "--dbname", dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # pg_dump prints a random \restrict key on newer minor releases.
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))
