"""Bad input: one clear line, a non-zero exit, never a traceback, and the database unchanged.

Every case runs the CLI in-process with exceptions propagating (a traceback
fails the test) against a database holding a registry, legacy rows and
memberships, and compares a full dump (schema, data, sequences) before and after.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from tests.conftest import Databases
from tests.legacy import legacy_bars, seed_registry
from tests.load import connect, expand_revision

pytestmark = pytest.mark.faults

HEADER = "instrument_token,tradingsymbol,exchange,instrument_type\n"
HOSTILE = 'data_bars";DROP TABLE market.data_bars;--'


def full_dump(dsn: str) -> str:
    out = subprocess.run(
        ["pg_dump", "--no-owner", "--no-privileges", "--dbname", dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


def populate(dsn: str, revision: str) -> None:
    if revision in ("legacy_baseline", "control_schema"):
        return
    with connect(dsn) as conn:
        seed_registry(conn)
        legacy_bars(conn, minutes=5)
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
            " VALUES ('NIFTY50', 102, 0.1, '2025-01-01')"
        )


@pytest.fixture(scope="module")
def database(databases: Databases) -> Iterator[Callable[[str], tuple[str, str]]]:
    """One populated database per revision for the whole module, with its dump.

    Sharing is sound here: every case must leave its database exactly as the dump says.
    """
    made: dict[str, tuple[DatabaseJanitor, str, str]] = {}

    def get(revision: str) -> tuple[str, str]:
        if revision not in made:
            janitor = databases.create(revision)
            dsn = databases.server.dsn(janitor.dbname)
            populate(dsn, revision)
            made[revision] = (janitor, dsn, full_dump(dsn))
        return made[revision][1], made[revision][2]

    yield get
    for janitor, _, _ in made.values():
        janitor.drop()


# (id, revision, CLI arguments, CSV file content, expected start of the message, exit code)
CASES: list[tuple[str, str, list[str], bytes | None, str, int]] = [
    (
        "malformed instrument_key",
        "expand",
        ["registry", "import", "--broker", "zerodha", "{csv}"],
        (HEADER + "900,APPLE INC,NASDAQ,EQ\n").encode(),
        "{csv}:2: instrument_key 'APPLE INC_NASDAQ_EQUITY' is not SYMBOL_EXCHANGE_TYPE",
        2,
    ),
    (
        "overlapping token validity",
        "expand",
        ["registry", "import", "--broker", "zerodha", "{csv}", "--as-of", "2025-06-01"],
        (HEADER + "101,CCC,NSE,EQ\n").encode(),
        "{csv}: ",
        1,
    ),
    (
        "CSV missing column",
        "expand",
        ["registry", "import", "--broker", "zerodha", "{csv}"],
        b"instrument_token,tradingsymbol,exchange\n900,AAPL,NASDAQ\n",
        "{csv}:1: missing column(s) instrument_type",
        2,
    ),
    (
        "CSV bad line",
        "expand",
        ["registry", "import", "--broker", "zerodha", "{csv}"],
        (HEADER + "900,AAPL,NASDAQ,EQ\n901,MSFT,NASDAQ,EQ,extra\n").encode(),
        "{csv}:3: more fields than the header has columns",
        2,
    ),
    (
        "CSV unknown encoding",
        "expand",
        ["registry", "import", "--broker", "zerodha", "{csv}"],
        HEADER.encode() + b"900,NESTL\xc9,NSE,EQ\n",
        "{csv}:2: not UTF-8 (byte 0xc9)",
        2,
    ),
    (
        "hostile broker name",
        "expand",
        ["registry", "import", "--broker", "zerodha';DROP SCHEMA keyshift CASCADE;--", "{csv}"],
        (HEADER + "900,AAPL,NASDAQ,EQ\n").encode(),
        '--broker "zerodha\';DROP SCHEMA keyshift CASCADE;--": use lower-case letters',
        2,
    ),
    (
        "hostile table on backfill",
        "expand",
        ["backfill", f"market.{HOSTILE}"],
        None,
        f"table 'market.{HOSTILE}' is not SCHEMA.TABLE",
        2,
    ),
    (
        "hostile schema on phase",
        "expand",
        ["phase", 'market";DROP SCHEMA market CASCADE;--.data_bars', "key_primary", "--reason", "x"],
        None,
        'market";DROP SCHEMA market CASCADE;--.data_bars is not under migration',
        2,
    ),
    (
        "table name with a dot too many",
        "expand",
        ["backfill", "market.data_bars.instrument_key"],
        None,
        "table 'market.data_bars.instrument_key' is not SCHEMA.TABLE (e.g. market.data_bars)",
        2,
    ),
    (
        "unknown phase",
        "expand",
        ["phase", "market.data_bars", "keyonly", "--reason", "x"],
        None,
        "keyshift phase: Invalid value for 'PHASE': 'keyonly' is not one of",
        2,
    ),
    (
        "phase skipped",
        "expand",
        ["phase", "market.data_bars", "key_only", "--reason", "x"],
        None,
        "market.data_bars is in phase dual: move one phase at a time",
        2,
    ),
    (
        "unknown setting (get)",
        "expand",
        ["flags", "get", "backfill.batch_row"],
        None,
        "unknown setting 'backfill.batch_row'; known settings: backfill.batch_rows,",
        2,
    ),
    (
        "unknown setting (set)",
        "expand",
        ["flags", "set", "memberships.enabled", "true", "--reason", "x"],
        None,
        "unknown setting 'memberships.enabled'; known settings:",
        2,
    ),
    (
        "setting value of the wrong kind",
        "expand",
        ["flags", "set", "memberships.batch_size", "lots", "--reason", "x"],
        None,
        "setting memberships.batch_size: lots is not a valid int value",
        2,
    ),
    (
        "unknown retention flow",
        "expand",
        ["retention", "run", "positions"],
        None,
        "keyshift retention run: Invalid value for",
        2,
    ),
    (
        "unknown command",
        "expand",
        ["reconcile-everything"],
        None,
        "keyshift: No such command 'reconcile-everything'",
        2,
    ),
    (
        "batch size out of range",
        "expand",
        ["memberships", "sync", "--batch-size", "0"],
        None,
        "keyshift memberships sync: Invalid value for '--batch-size': 0 is not in the range x>=1",
        2,
    ),
    (
        "unknown pre-flight step",
        "expand",
        ["preflight", "--for", "nope"],
        None,
        "unknown step 'nope' for --for; known steps: all, any, backfill,",
        2,
    ),
    (
        "hostile table on reconcile",
        "expand",
        ["reconcile", "--source", f"market.{HOSTILE}", "--target", "market.data_bars", "--key", "ts"],
        None,
        f"source 'market.{HOSTILE}' is not a table or view in this database",
        2,
    ),
    (
        "hostile column on reconcile",
        "expand",
        [
            "reconcile",
            "--source",
            "market.data_bars",
            "--target",
            "market.derived_data_bars",
            "--key",
            'ts";--',
        ],
        None,
        "market.data_bars has no column 'ts\";--'; its columns: instrument_token,",
        2,
    ),
    (
        "hostile slice column on reconcile",
        "expand",
        [
            "reconcile",
            "--source",
            "market.derived_data_bars",
            "--target",
            "market.data_bars",
            "--key",
            "ts",
            "--slice",
            "symbol) OR (1=1=DXY",
        ],
        None,
        "market.derived_data_bars has no column 'symbol) OR (1'",
        2,
    ),
    (
        "unknown relocation",
        "expand",
        ["relocate", "eurx", "copy"],
        None,
        "keyshift relocate: No such command 'eurx'",
        2,
    ),
    (
        "database without the control schema",
        "legacy_baseline",
        ["status"],
        None,
        "database has no keyshift control schema",
        2,
    ),
    (
        "backfill before key_columns",
        "control_schema",
        ["backfill", "market.data_bars"],
        None,
        "market.data_bars is not under migration; no table is under migration yet:"
        " run 'alembic upgrade key_columns'",
        2,
    ),
    (
        "memberships before their revision",
        "key_columns",
        ["memberships", "sync"],
        None,
        "this database has no registry memberships; run 'alembic upgrade index_memberships_dual_write'",
        2,
    ),
    (
        "registry import before the registry",
        "control_schema",
        ["registry", "import", "--broker", "zerodha", "{csv}"],
        (HEADER + "900,AAPL,NASDAQ,EQ\n").encode(),
        "this database has no instrument registry; run 'alembic upgrade instrument_registry'",
        2,
    ),
]


@pytest.mark.parametrize(
    ("revision", "args", "csv", "expected", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_input_is_one_line_non_zero_and_changes_nothing(
    database: Callable[[str], tuple[str, str]],
    cli: Callable,  # type: ignore[type-arg]
    tmp_path: Path,
    revision: str,
    args: list[str],
    csv: bytes | None,
    expected: str,
    code: int,
) -> None:
    dsn, before = database(expand_revision() if revision == "expand" else revision)
    path = tmp_path / "dump.csv"
    if csv is not None:
        path.write_bytes(csv)
    argv = [a.replace("{csv}", str(path)) for a in args]
    result = cli(*argv, dsn=dsn)
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keyshift: error: " + expected.replace("{csv}", str(path))), lines[0]
    assert result.stdout == ""
    assert full_dump(dsn) == before


def test_a_login_the_server_refuses_is_one_line_exit_2_with_the_password_masked(head_dsn: str) -> None:
    # The test server trusts every local connection, so a wrong password cannot be refused
    # there; a role that may not log in is refused by the server the same way, after the
    # DSN with its password went over the wire.
    role = f"ks_nologin_{os.getpid()}"
    with connect(head_dsn) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    try:
        params = psycopg.conninfo.conninfo_to_dict(head_dsn)
        dsn = psycopg.conninfo.make_conninfo(head_dsn, user=role, password="Wr0ngPassw0rd")
        before = full_dump(head_dsn)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "toolkit",
                "flags",
                "set",
                "backfill.pause_ms",
                "5",
                "--reason",
                "x",
                "--dsn",
                dsn,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr
        assert lines[0].startswith(
            f"keyshift: error: cannot connect to host={params['host']} port={params['port']}"
            f" dbname={params['dbname']} user={role}: "
        )
        assert f'role "{role}" is not permitted to log in' in lines[0]
        assert "Wr0ngPassw0rd" not in proc.stderr + proc.stdout
        assert full_dump(head_dsn) == before
    finally:
        with connect(head_dsn) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_hostile_names_reach_no_sql(new_db: Callable[..., str], cli: Callable) -> None:  # type: ignore[type-arg]
    """The catalog after every hostile case: the tables the payloads name still stand."""
    dsn = new_db(expand_revision())
    populate(dsn, "expand")
    for args in (
        ["backfill", f"market.{HOSTILE}"],
        ["phase", f"market.{HOSTILE}", "key_primary", "--reason", "x"],
        ["dlq", "list", "--source", "x' OR '1'='1"],
        # A slice value is a bound parameter: it selects nothing, it runs nothing.
        [
            "reconcile",
            "--source",
            "market.derived_data_bars",
            "--target",
            "market.derived_data_bars",
            "--key",
            "ts",
            "--slice",
            "symbol=DXY';DROP TABLE market.data_bars;--",
        ],
    ):
        cli(*args, dsn=dsn)
    with connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM market.data_bars").fetchone()
    assert row == (15,)
