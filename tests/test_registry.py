"""The instrument registry: rules the database enforces, time-aware lookups, broker imports."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.legacy import REUSE_AT, seed_registry
from toolkit import registry
from toolkit.errors import KeyshiftError

UTC = dt.timezone.utc


@pytest.fixture
def reg(new_db: Callable[..., str]) -> tuple[str, psycopg.Connection[Any]]:
    dsn = new_db("instrument_registry")
    conn = psycopg.connect(dsn, autocommit=True)
    yield dsn, conn
    conn.close()


def counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM instrument_registry.instruments),"
        " (SELECT count(*) FROM instrument_registry.broker_instrument_tokens)"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.parametrize(
    "key",
    ["aapl_NASDAQ_EQUITY", "AAPL_NASDAQ", "AAPL NASDAQ_EQUITY", "AAPL_NASDAQ_EQUITY_X", "_NSE_EQUITY"],
)
def test_malformed_key_is_refused_with_the_rule_named(reg: Any, key: str) -> None:
    _, conn = reg
    symbol, _, rest = key.partition("_")
    exchange, _, kind = rest.partition("_")
    with pytest.raises(psycopg.errors.CheckViolation, match="must be SYMBOL_EXCHANGE_TYPE|must equal symbol"):
        conn.execute(
            "INSERT INTO instrument_registry.instruments (instrument_key, symbol, exchange, instrument_type)"
            " VALUES (%s, %s, %s, %s)",
            (key, symbol, exchange, kind or "X"),
        )


@pytest.mark.parametrize(
    "key", ["M&M_NSE_EQUITY", "BRK.B_NYSE_EQUITY", "BAJAJ-AUTO_NSE_EQUITY", "NIFTY24JAN21000CE_NFO_OPTION"]
)
def test_well_formed_keys_are_accepted(reg: Any, key: str) -> None:
    _, conn = reg
    symbol, exchange, kind = key.rsplit("_", 2)
    conn.execute(
        "INSERT INTO instrument_registry.instruments (instrument_key, symbol, exchange, instrument_type)"
        " VALUES (%s, %s, %s, %s)",
        (key, symbol, exchange, kind),
    )
    assert counts(conn)[0] == 1


def test_overlapping_periods_of_a_token_are_refused(reg: Any) -> None:
    _, conn = reg
    seed_registry(conn)
    with pytest.raises(psycopg.errors.ExclusionViolation, match="token periods must not overlap"):
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens"
            " (broker, instrument_token, instrument_key, valid_from)"
            " VALUES ('zerodha', 102, 'AAA_NSE_EQUITY', '2026-03-01')"
        )
    with pytest.raises(psycopg.errors.ExclusionViolation, match="key periods must not overlap"):
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens"
            " (broker, instrument_token, instrument_key, valid_from)"
            " VALUES ('zerodha', 999, 'M&M_NSE_EQUITY', '2026-03-01')"
        )
    with pytest.raises(psycopg.errors.CheckViolation, match="must end after it starts"):
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens"
            " (broker, instrument_token, instrument_key, valid_from, valid_to)"
            " VALUES ('zerodha', 998, 'AAA_NSE_EQUITY', '2027-01-01', '2026-01-01')"
        )


def test_resolution_follows_validity_across_token_reuse(reg: Any) -> None:
    _, conn = reg
    seed_registry(conn)
    q = "SELECT instrument_registry.resolve_key('zerodha', %s, %s::timestamptz)"
    assert conn.execute(q, (101, "2025-06-01")).fetchone() == ("AAA_NSE_EQUITY",)
    assert conn.execute(q, (101, "2025-12-31 23:59:59.999999+00")).fetchone() == ("AAA_NSE_EQUITY",)
    assert conn.execute(q, (101, REUSE_AT)).fetchone() == ("BBB_NSE_EQUITY",)  # the end is exclusive
    assert conn.execute(q, (102, "1990-01-01")).fetchone() == ("M&M_NSE_EQUITY",)  # from -infinity
    assert conn.execute(q, (555, "2026-06-01")).fetchone() == (None,)
    inverse = "SELECT instrument_registry.resolve_token('zerodha', %s, %s::timestamptz)"
    assert conn.execute(inverse, ("AAA_NSE_EQUITY", "2025-06-01")).fetchone() == (101,)
    assert conn.execute(inverse, ("AAA_NSE_EQUITY", "2026-06-01")).fetchone() == (None,)
    assert conn.execute(inverse, ("BBB_NSE_EQUITY", "2026-06-01")).fetchone() == (101,)


def index_scans(conn: psycopg.Connection[Any]) -> dict[str, int]:
    conn.execute("SELECT pg_stat_force_next_flush()")
    return dict(
        conn.execute(
            "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes"
            " WHERE schemaname = 'instrument_registry' AND relname = 'broker_instrument_tokens'"
        ).fetchall()
    )


def test_lookups_descend_the_btree_indexes_not_the_gist_ones(reg: Any) -> None:
    _, conn = reg
    seed_registry(conn)
    conn.execute(
        "INSERT INTO instrument_registry.instruments (instrument_key, symbol, exchange, instrument_type)"
        " SELECT 'S' || i || '_NSE_EQUITY', 'S' || i, 'NSE', 'EQUITY' FROM generate_series(1, 3000) i"
    )
    conn.execute(
        "INSERT INTO instrument_registry.broker_instrument_tokens (broker, instrument_token, instrument_key)"
        " SELECT 'zerodha', 10000 + i, 'S' || i || '_NSE_EQUITY' FROM generate_series(1, 3000) i"
    )
    conn.execute("ANALYZE instrument_registry.broker_instrument_tokens")
    before = index_scans(conn)
    # Enough calls for plpgsql/SQL-function plan caching to settle on a generic plan.
    found = conn.execute(
        "SELECT count(instrument_registry.resolve_key('zerodha', 10000 + i, now()))"
        " + count(instrument_registry.resolve_token('zerodha', 'S' || i || '_NSE_EQUITY', now()))"
        " FROM generate_series(1, 200) i"
    ).fetchone()
    assert found == (400,)
    after = index_scans(conn)
    delta = {name: after[name] - before.get(name, 0) for name in after}
    assert delta["broker_instrument_tokens_pkey"] >= 200
    assert delta["broker_instrument_tokens_key_idx"] >= 200
    assert delta["token periods must not overlap"] == 0
    assert delta["key periods must not overlap"] == 0


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


DUMP = (
    "instrument_token,tradingsymbol,exchange,instrument_type,name,lot_size\n"
    "101,aaa,nse,EQ,Aaa Ltd,1\n"
    "102,M&M,NSE,EQ,Mahindra,1\n"
    "103,NIFTY24JANFUT,NFO,FUT,,50\n"
)


def test_import_builds_keys_opens_periods_from_minus_infinity_and_claims_the_broker(
    reg: Any, tmp_path: Path
) -> None:
    dsn, conn = reg
    summary = registry.import_dump(dsn, write_csv(tmp_path / "d.csv", DUMP), "zerodha")
    assert (summary["instruments_new"], summary["mappings_opened"], summary["mappings_closed"]) == (3, 3, 0)
    rows = conn.execute(
        "SELECT instrument_token, instrument_key, valid_from = '-infinity', valid_to IS NULL"
        " FROM instrument_registry.broker_instrument_tokens ORDER BY 1"
    ).fetchall()
    assert rows == [
        (101, "AAA_NSE_EQUITY", True, True),
        (102, "M&M_NSE_EQUITY", True, True),
        (103, "NIFTY24JANFUT_NFO_FUTURE", True, True),
    ]
    meta = conn.execute(
        "SELECT metadata FROM instrument_registry.instruments WHERE instrument_key = 'AAA_NSE_EQUITY'"
    ).fetchone()
    assert meta == ({"name": "Aaa Ltd", "lot_size": "1"},)
    assert conn.execute("SELECT keyshift.setting('registry.legacy_broker')").fetchone() == ("zerodha",)
    again = registry.import_dump(dsn, tmp_path / "d.csv", "zerodha")
    assert (again["mappings_unchanged"], again["mappings_opened"], again["instruments_new"]) == (3, 0, 0)


def test_import_moves_a_reused_token_at_as_of(reg: Any, tmp_path: Path) -> None:
    dsn, conn = reg
    registry.import_dump(dsn, write_csv(tmp_path / "d.csv", DUMP), "zerodha")
    moved = write_csv(
        tmp_path / "m.csv", "instrument_token,tradingsymbol,exchange,instrument_type\n101,BBB,NSE,EQ\n"
    )
    as_of = dt.datetime(2026, 1, 1, tzinfo=UTC)
    summary = registry.import_dump(dsn, moved, "zerodha", as_of=as_of)
    assert (summary["mappings_closed"], summary["mappings_opened"]) == (1, 1)
    q = "SELECT instrument_registry.resolve_key('zerodha', 101, %s::timestamptz)"
    assert conn.execute(q, ("2025-12-31",)).fetchone() == ("AAA_NSE_EQUITY",)
    assert conn.execute(q, ("2026-01-02",)).fetchone() == ("BBB_NSE_EQUITY",)
    # --valid-from applies to a new token's first period.
    fresh = write_csv(
        tmp_path / "f.csv", "instrument_token,tradingsymbol,exchange,instrument_type\n201,CCC,BSE,EQ\n"
    )
    registry.import_dump(dsn, fresh, "zerodha", valid_from=dt.datetime(2024, 1, 1, tzinfo=UTC))
    assert conn.execute(q.replace("101", "201"), ("2023-12-31",)).fetchone() == (None,)
    assert conn.execute(q.replace("101", "201"), ("2024-01-01",)).fetchone() == ("CCC_BSE_EQUITY",)


def test_dry_run_reports_and_changes_nothing(reg: Any, tmp_path: Path) -> None:
    dsn, conn = reg
    summary = registry.import_dump(dsn, write_csv(tmp_path / "d.csv", DUMP), "zerodha", dry_run=True)
    assert summary["instruments_new"] == 3 and summary["dry_run"]
    assert counts(conn) == (0, 0)
    assert conn.execute("SELECT keyshift.setting('registry.legacy_broker')").fetchone() == (None,)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "instrument_token,tradingsymbol,exchange\n1,A,NSE\n",
            r"d.csv:1: missing column\(s\) instrument_type",
        ),
        (
            DUMP + "104,bad sym,NSE,EQ,,\n",
            r"d.csv:5: instrument_key 'BAD SYM_NSE_EQUITY' is not SYMBOL_EXCHANGE_TYPE",
        ),
        (DUMP + "101,ZZZ,NSE,EQ,,\n", r"d.csv:5: instrument_token 101 is already on line 2"),
        (DUMP + "x7,ZZZ,NSE,EQ,,\n", r"d.csv:5: instrument_token 'x7' is not a positive whole number"),
        (DUMP + "105,,NSE,EQ,,\n", r"d.csv:5: tradingsymbol is empty"),
        (DUMP + "106,AAA,NSE,EQ,,\n", r"d.csv:5: instrument_key AAA_NSE_EQUITY is already built by line 2"),
    ],
)
def test_a_bad_line_aborts_the_import_naming_the_line_and_leaves_nothing(
    reg: Any, tmp_path: Path, content: str, message: str
) -> None:
    dsn, conn = reg
    with pytest.raises(KeyshiftError, match=message) as info:
        registry.import_dump(dsn, write_csv(tmp_path / "d.csv", content), "zerodha")
    assert info.value.exit_code == 2
    assert counts(conn) == (0, 0)


def test_unknown_encoding_is_named_with_its_line(reg: Any, tmp_path: Path) -> None:
    dsn, conn = reg
    path = tmp_path / "d.csv"
    path.write_bytes(DUMP.encode() + b"107,CAF\xe9,NSE,EQ,,\n")
    with pytest.raises(KeyshiftError, match=r"d.csv:5: not UTF-8 \(byte 0xe9\)"):
        registry.import_dump(dsn, path, "zerodha")
    assert counts(conn) == (0, 0)


def test_import_that_fails_in_the_database_leaves_nothing(reg: Any, tmp_path: Path) -> None:
    dsn, conn = reg
    registry.import_dump(
        dsn, write_csv(tmp_path / "d.csv", DUMP), "zerodha", as_of=dt.datetime(2026, 6, 1, tzinfo=UTC)
    )
    registry.import_dump(
        dsn,
        write_csv(
            tmp_path / "m.csv", "instrument_token,tradingsymbol,exchange,instrument_type\n101,BBB,NSE,EQ\n"
        ),
        "zerodha",
        as_of=dt.datetime(2026, 6, 1, tzinfo=UTC),
    )
    before = counts(conn)
    # Moving 102 before the period BBB opened for 101 would overlap nothing, but
    # moving 101 back to before 2026-06-01 contradicts the period that starts then.
    bad = write_csv(
        tmp_path / "b.csv",
        "instrument_token,tradingsymbol,exchange,instrument_type\n999,NEW,NSE,EQ\n101,CCC,NSE,EQ\n",
    )
    with pytest.raises(KeyshiftError):
        registry.import_dump(dsn, bad, "zerodha", as_of=dt.datetime(2026, 5, 1, tzinfo=UTC))
    assert counts(conn) == before


def test_cli_import_bad_line_is_one_line_exit_2(cli: Callable, reg: Any, tmp_path: Path) -> None:  # type: ignore[type-arg]
    dsn, _ = reg
    result = cli(
        "registry",
        "import",
        "--broker",
        "zerodha",
        str(write_csv(tmp_path / "d.csv", DUMP + "101,ZZZ,NSE,EQ,,\n")),
        dsn=dsn,
    )
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "d.csv:5: instrument_token 101 is already on line 2" in result.stderr
    bad_broker = cli("registry", "import", "--broker", "Zero; drop", str(tmp_path / "d.csv"), dsn=dsn)
    assert bad_broker.exit_code == 2 and "--broker 'Zero; drop'" in bad_broker.stderr
