"""keyshift demo: end to end on the test server and on an embedded one (as root too), cleanup always."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import Server
from toolkit import demo, migrate

ROWS = "1000"
ENV_VARS = (
    "DATABASE_URL",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGSERVICE",
    "PGPASSWORD",
)
STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.+?): (passed|failed|skipped)", re.MULTILINE)

pytestmark = pytest.mark.slow


def demo_databases(server: Server) -> set[str]:
    """Scratch databases of demos run by this process (others may run demos on the server too)."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"keyshift\\_demo\\_%\\_{os.getpid()}",),
        )
        return {r[0] for r in rows}


def temp_dirs(pid: int | None = None) -> set[str]:
    """Temporary directories of demos run by a process (others may run demos meanwhile)."""
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"keyshift-demo-{pid or os.getpid()}-*")}


def statuses(stdout: str) -> dict[str, str]:
    return {m.group(3): m.group(4) for m in STEP_LINE.finditer(stdout)}


def assert_every_step_passed(exit_code: int, stdout: str) -> None:
    """Every step of the demo printed "passed", and the exit code is 0."""
    found = statuses(stdout)
    assert [found.get(s.name) for s in demo.STEPS] == ["passed"] * len(demo.STEPS), stdout
    assert "demo: every step passed" in stdout
    assert exit_code == 0, stdout


@pytest.fixture
def no_database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_demo_on_a_server_drops_its_scratch_database(
    cli: Callable,
    pg_server: Server,
    no_database_env: None,  # type: ignore[type-arg]
) -> None:
    before = demo_databases(pg_server)
    result = cli("demo", "--rows", ROWS, dsn=pg_server.dsn())
    assert_every_step_passed(result.exit_code, result.stdout)
    assert "rows migrated (backfill)" in result.stdout and "open dead letters" in result.stdout
    assert demo_databases(pg_server) == before


def test_demo_keep_keeps_a_migrated_database(
    cli: Callable,
    pg_server: Server,
    no_database_env: None,  # type: ignore[type-arg]
) -> None:
    before = demo_databases(pg_server)
    result = cli("demo", "--rows", ROWS, "--keep", dsn=pg_server.dsn())
    kept = demo_databases(pg_server) - before
    try:
        assert len(kept) == 1, result.stdout
        (name,) = kept
        assert f"kept database {name}" in result.stdout
        with psycopg.connect(pg_server.dsn(name)) as conn:
            assert migrate.current_revision(conn) == migrate.script().get_current_head()
            phases = conn.execute("SELECT DISTINCT phase FROM keyshift.migrated_tables").fetchall()
            bars, unkeyed, reused = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE instrument_key IS NULL),"
                " count(DISTINCT instrument_key) FILTER (WHERE instrument_token = 13100001)"
                " FROM market.data_bars"
            ).fetchone() or (0, 0, 0)
        assert phases == [("key_primary",)]
        assert bars >= 992 and unkeyed == 0 and reused == 2  # 32 instruments x 31 minutes + the writer's
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            for name in kept:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("with_preflight", [True, False])
def test_a_failed_verdict_stops_the_demo_and_fails_it(
    pg_server: Server, no_database_env: None, with_preflight: bool
) -> None:
    def unmapped_bars(ctx: demo.Context) -> dict[str, Any]:
        with ctx.connect() as conn:
            n = conn.execute(
                "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
                " SELECT 999, '1m', '2026-01-05'::timestamptz + m * interval '1 minute', 1, 1, 1, 1"
                " FROM generate_series(1, 5) m"
            ).rowcount
        return {"unmapped_bars": n}

    # Legacy rows written before keyshift came: no trigger refuses them; pre-flight
    # (check unmapped_tokens) stops the demo, and without it the backfill's verdict does.
    names = [s.name for s in demo.STEPS if with_preflight or s.name != "pre-flight"]
    steps = tuple(s for s in demo.STEPS if s.name in names)
    at = names.index("legacy database") + 1
    steps = (*steps[:at], demo.Step("legacy rows nobody mapped", unmapped_bars), *steps[at:])
    failing = "pre-flight" if with_preflight else "backfill with a concurrent writer"
    before = demo_databases(pg_server)
    outcomes, summary = demo.run(pg_server.dsn(), 1000, False, lambda _line: None, steps)
    by_step = {o.step: o for o in outcomes}
    assert by_step[failing].status == "failed"
    if with_preflight:
        assert "pre-flight errors: unmapped_tokens" in by_step[failing].note
    else:
        assert "5 rows still have no instrument_key" in by_step[failing].note
        assert summary["open_dead_letters"] == 5
    assert {by_step[n].status for n in names[names.index(failing) + 1 :]} == {"not run"}
    assert summary["passed"] is False
    assert demo_databases(pg_server) == before


def test_demo_embedded_without_any_configuration(cli: Callable, no_database_env: None) -> None:  # type: ignore[type-arg]
    before = temp_dirs()
    result = cli("demo", "--rows", ROWS)
    assert "starting an embedded Postgres" in result.stdout
    assert_every_step_passed(result.exit_code, result.stdout)
    assert temp_dirs() == before
    port = re.search(r"demo database host=127.0.0.1 port=(\d+)", result.stdout)
    assert port, result.stdout
    with pytest.raises(psycopg.OperationalError):  # the server is gone
        psycopg.connect(host="127.0.0.1", port=int(port.group(1)), user="postgres", connect_timeout=3)


def test_keep_without_a_server_is_a_usage_error(cli: Callable, no_database_env: None) -> None:  # type: ignore[type-arg]
    before = temp_dirs()
    result = cli("demo", "--keep")
    assert result.exit_code == 2
    assert "--keep needs a server" in result.stderr and "Traceback" not in result.stderr
    assert temp_dirs() == before


@pytest.fixture
def subprocess_env() -> Iterator[dict[str, str]]:
    yield {k: v for k, v in os.environ.items() if k not in ENV_VARS}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_embedded_demo_stops_and_removes_its_server(
    signum: signal.Signals, subprocess_env: dict[str, str]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "demo", "--rows", "50000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env,
    )
    assert proc.stdout is not None
    port = None
    for line in proc.stdout:
        match = re.search(r"port=(\d+)", line)
        port = port or (match and int(match.group(1)))
        if line.startswith("[1/"):  # the server runs and the legacy data is in
            break
    assert port, "the demo did not start"
    assert temp_dirs(proc.pid)  # the server's directory exists while it runs
    proc.send_signal(signum)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert temp_dirs(proc.pid) == set()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", connect_timeout=3)


def test_a_step_not_available_is_skipped_and_fails_the_demo(pg_server: Server, no_database_env: None) -> None:
    lines: list[str] = []
    steps = (
        demo.Step("legacy database", demo.step_legacy),
        demo.Step("a step of a module not written yet", demo.step_dxy, ("toolkit.not_written_yet",)),
        demo.Step("a step not wired yet", None),
    )
    outcomes, summary = demo.run(pg_server.dsn(), 100, False, lines.append, steps)
    assert [o.status for o in outcomes] == ["passed", "skipped", "skipped"]
    assert "[2/3] a step of a module not written yet: skipped: not available" in lines
    assert summary["passed"] is False and summary["steps"]["skipped"] == 2
