"""The key sync trigger, for every phase x mode x kind of write, on a real table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.legacy import make_legacy_db

TS = "2026-03-01 10:00:00+00"
INSERT = (
    "INSERT INTO market.data_bars (instrument_token, instrument_key, timeframe, ts, open, high, low, close)"
    " VALUES (%s, %s, '1m', %s, 1, 1, 1, 1) RETURNING instrument_token, instrument_key"
)

# (token, key) written -> what each phase/mode does with it.
WRITES = {
    "token_only_mapped": (102, None),
    "token_only_unmapped": (555, None),
    "key_only": (None, "M&M_NSE_EQUITY"),
    "both_consistent": (102, "M&M_NSE_EQUITY"),
    "both_inconsistent": (102, "AAA_NSE_EQUITY"),
}
OK_MM = ("ok", (102, "M&M_NSE_EQUITY"))
CASES: dict[tuple[str, str], dict[str, Any]] = {
    ("token_only", "strict"): {
        "token_only_mapped": ("ok", (102, None)),
        "token_only_unmapped": ("ok", (555, None)),
        "both_consistent": OK_MM,
        "both_inconsistent": ("ok", (102, "AAA_NSE_EQUITY")),
    },
    ("dual", "strict"): {
        "token_only_mapped": OK_MM,
        "token_only_unmapped": ("error", "no instrument_key for instrument_token 555 of broker zerodha"),
        "key_only": OK_MM,
        "both_consistent": OK_MM,
        "both_inconsistent": ("error", "inconsistent pair: instrument_token 102 means M&M_NSE_EQUITY"),
    },
    ("dual", "lenient"): {
        "token_only_mapped": OK_MM,
        "token_only_unmapped": ("dead", (555, None)),
        "key_only": OK_MM,
        "both_consistent": OK_MM,
        "both_inconsistent": ("dead", (102, "AAA_NSE_EQUITY")),
    },
    ("key_primary", "strict"): {
        "token_only_mapped": ("usage", (102, "M&M_NSE_EQUITY")),
        "token_only_unmapped": ("error", "no instrument_key for instrument_token 555"),
        "key_only": OK_MM,
        "both_consistent": OK_MM,
        "both_inconsistent": ("error", "inconsistent pair"),
    },
    ("key_primary", "lenient"): {
        "token_only_mapped": ("usage", (102, "M&M_NSE_EQUITY")),
        # Past dual a row cannot be stored without a key, lenient or not.
        "token_only_unmapped": ("error", "no instrument_key for instrument_token 555"),
        "key_only": OK_MM,
        "both_consistent": OK_MM,
        "both_inconsistent": ("dead", (102, "AAA_NSE_EQUITY")),
    },
    ("key_only", "strict"): {
        "token_only_mapped": (
            "error",
            "is in phase key_only: a write carrying only instrument_token 102 is refused",
        ),
        "token_only_unmapped": ("error", "no instrument_key for instrument_token 555"),
        "key_only": OK_MM,
        "both_consistent": OK_MM,
        "both_inconsistent": ("error", "inconsistent pair"),
    },
    ("key_only", "lenient"): {
        "token_only_mapped": (
            "error",
            "is in phase key_only: a write carrying only instrument_token 102 is refused",
        ),
        "key_only": OK_MM,
        "both_inconsistent": ("dead", (102, "AAA_NSE_EQUITY")),
    },
}


@pytest.fixture(scope="module")
def legacy_template(databases: Any) -> str:
    """One legacy database per module; each test works on a clone."""
    return make_legacy_db(lambda revision=None: databases.server.dsn(databases.create(revision).dbname))


@pytest.fixture
def conn(legacy_template: str, databases: Any) -> Any:
    source = psycopg.conninfo.conninfo_to_dict(legacy_template)["dbname"]
    janitor = databases._janitor(databases.next_name("sync"), template=str(source))
    janitor.init()
    with psycopg.connect(databases.server.dsn(janitor.dbname), autocommit=True) as c:
        yield c
    janitor.drop()


def set_phase(conn: psycopg.Connection[Any], phase: str, mode: str, key_only: str = "refuse") -> None:
    conn.execute(
        "UPDATE keyshift.migrated_tables SET phase = %s, validation_mode = %s, key_only_token_writes = %s"
        " WHERE table_name = 'data_bars'",
        (phase, mode, key_only),
    )


def open_letters(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT source, operation, row_identity, payload->>'instrument_key', reason"
        " FROM keyshift.dead_letters WHERE resolved_at IS NULL ORDER BY id"
    ).fetchall()


def usage(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("SELECT count(*) FROM keyshift.token_usage").fetchone()[0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("phase", "mode", "write", "expected"),
    [(p, m, w, e) for (p, m), outcomes in CASES.items() for w, e in outcomes.items()],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_phase_mode_write(
    conn: psycopg.Connection[Any], phase: str, mode: str, write: str, expected: tuple[str, Any]
) -> None:
    set_phase(conn, phase, mode)
    token, key = WRITES[write]
    outcome, detail = expected
    if outcome == "error":
        with pytest.raises(psycopg.Error, match=detail):
            conn.execute(INSERT, (token, key, TS))
        assert open_letters(conn) == [] and usage(conn) == 0
        return
    stored = conn.execute(INSERT, (token, key, TS)).fetchone()
    assert stored == detail
    letters = open_letters(conn)
    if outcome == "dead":
        assert len(letters) == 1
        source, operation, identity, payload_key, reason = letters[0]
        assert (source, operation) == ("market.data_bars", "INSERT")
        assert identity == {"instrument_token": token, "timeframe": "1m", "ts": "2026-03-01T10:00:00+00:00"}
        assert payload_key == key
        assert reason
    else:
        assert letters == []
    assert usage(conn) == (1 if outcome == "usage" else 0)


def test_key_only_token_writes_resolve_flag(conn: psycopg.Connection[Any]) -> None:
    set_phase(conn, "key_only", "strict", key_only="resolve")
    assert conn.execute(INSERT, (102, None, TS)).fetchone() == (102, "M&M_NSE_EQUITY")
    row = conn.execute(
        "SELECT table_name, phase, operation, instrument_token FROM keyshift.token_usage"
    ).fetchone()
    assert row == ("data_bars", "key_only", "INSERT", 102)


def test_one_statement_resolves_each_row_at_its_own_time_across_token_reuse(
    conn: psycopg.Connection[Any],
) -> None:
    set_phase(conn, "dual", "strict")
    rows = conn.execute(
        "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
        " SELECT 101, '5m', ts, 1, 1, 1, 1 FROM unnest(ARRAY["
        "'2025-12-31 23:50+00', '2026-01-01 00:00+00', '2025-12-31 23:55+00', '2026-01-02 00:00+00'"
        "]::timestamptz[]) ts RETURNING ts, instrument_key"
    ).fetchall()
    by_ts = {ts.isoformat(): key for ts, key in rows}
    assert by_ts == {
        "2025-12-31T23:50:00+00:00": "AAA_NSE_EQUITY",
        "2026-01-01T00:00:00+00:00": "BBB_NSE_EQUITY",
        "2025-12-31T23:55:00+00:00": "AAA_NSE_EQUITY",
        "2026-01-02T00:00:00+00:00": "BBB_NSE_EQUITY",
    }


def test_token_cache_never_outlives_a_registry_change(conn: psycopg.Connection[Any]) -> None:
    """A registry change later in the same transaction is seen by the next statement."""
    set_phase(conn, "dual", "strict")
    with conn.transaction():
        first = conn.execute(INSERT, (102, None, "2026-07-01 00:00+00")).fetchone()
        conn.execute(
            "UPDATE instrument_registry.broker_instrument_tokens SET valid_to = '2026-06-01'"
            " WHERE instrument_token = 102"
        )
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens"
            " (broker, instrument_token, instrument_key, valid_from)"
            " VALUES ('zerodha', 102, 'NIFTY24JANFUT_NFO_FUTURE', '2026-06-01')"
            " ON CONFLICT DO NOTHING"
        )
        conn.execute("DELETE FROM instrument_registry.broker_instrument_tokens WHERE instrument_token = 103")
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens"
            " (broker, instrument_token, instrument_key, valid_from)"
            " VALUES ('zerodha', 102, 'NIFTY24JANFUT_NFO_FUTURE', '2026-06-01')"
        )
        second = conn.execute(INSERT, (102, None, "2026-07-02 00:00+00")).fetchone()
    assert first == (102, "M&M_NSE_EQUITY")
    assert second == (102, "NIFTY24JANFUT_NFO_FUTURE")


def test_registry_change_committed_elsewhere_reaches_an_open_transaction(
    conn: psycopg.Connection[Any],
) -> None:
    """The cached mapping of an open transaction is dropped when another session changes the registry."""
    set_phase(conn, "dual", "strict")
    dsn = conn.info.dsn
    with psycopg.connect(dsn) as writer:  # one transaction until the end
        first = writer.execute(INSERT, (102, None, "2026-07-01 00:00+00")).fetchone()
        conn.execute(
            "UPDATE instrument_registry.broker_instrument_tokens SET valid_to = '2026-06-01'"
            " WHERE instrument_token = 102"
        )
        conn.execute("DELETE FROM instrument_registry.broker_instrument_tokens WHERE instrument_token = 103")
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens"
            " (broker, instrument_token, instrument_key, valid_from)"
            " VALUES ('zerodha', 102, 'NIFTY24JANFUT_NFO_FUTURE', '2026-06-01')"
        )
        second = writer.execute(INSERT, (102, None, "2026-07-02 00:00+00")).fetchone()
        writer.rollback()
    assert first == (102, "M&M_NSE_EQUITY")
    assert second == (102, "NIFTY24JANFUT_NFO_FUTURE")


def test_configuration_change_reaches_open_sessions_at_their_next_statement(
    conn: psycopg.Connection[Any],
) -> None:
    """The triggers read phase and mode from a published constant: a change must reach every session."""
    set_phase(conn, "dual", "strict")
    with psycopg.connect(conn.info.dsn, autocommit=True) as writer:
        with pytest.raises(psycopg.Error, match="no instrument_key for instrument_token 555"):
            writer.execute(INSERT, (555, None, TS))
        set_phase(conn, "dual", "lenient")
        assert writer.execute(INSERT, (555, None, TS)).fetchone() == (555, None)
        set_phase(conn, "key_only", "strict")
        with pytest.raises(psycopg.Error, match="is in phase key_only"):
            writer.execute(INSERT, (102, None, "2026-03-01 10:01+00"))
    assert [letter[1] for letter in open_letters(conn)] == ["INSERT"]


def test_updates_keep_the_pair_consistent(conn: psycopg.Connection[Any]) -> None:
    set_phase(conn, "dual", "strict")
    conn.execute(INSERT, (102, None, TS))
    update = (
        "UPDATE market.data_bars SET volume = volume + 1,"
        " instrument_token = coalesce(%s, instrument_token),"
        " instrument_key = CASE WHEN %s THEN NULL ELSE instrument_key END"
        " WHERE timeframe = '1m' AND ts = %s RETURNING instrument_token, instrument_key"
    )
    # Nothing of the pair changes: the key stays.
    assert conn.execute(update, (None, False, TS)).fetchone() == (102, "M&M_NSE_EQUITY")
    # A new token with the old key is an inconsistent pair...
    with pytest.raises(psycopg.Error, match="inconsistent pair: instrument_token 103"):
        conn.execute(update, (103, False, TS))
    # ... a new token with no key gets the token's key.
    assert conn.execute(update, (103, True, TS)).fetchone() == (103, "NIFTY24JANFUT_NFO_FUTURE")
    # A legacy row without a key that is touched for any reason gets its key.
    assert conn.execute(
        "UPDATE market.data_bars SET volume = volume + 1 WHERE instrument_token = 101"
        " AND ts = '2025-12-31 22:00+00' RETURNING instrument_key"
    ).fetchone() == ("AAA_NSE_EQUITY",)


def test_lenient_letters_are_refreshed_not_repeated(conn: psycopg.Connection[Any]) -> None:
    set_phase(conn, "dual", "lenient")
    conn.execute(INSERT, (555, None, TS))
    conn.execute("UPDATE market.data_bars SET volume = 9 WHERE instrument_token = 555")
    letters = open_letters(conn)
    assert len(letters) == 1 and letters[0][1] == "UPDATE"


def test_registry_broker_unset_is_named(new_db: Callable[..., str]) -> None:
    dsn = new_db("key_columns")
    with (
        psycopg.connect(dsn, autocommit=True) as c,
        pytest.raises(psycopg.Error, match="registry.legacy_broker is not set"),
    ):
        c.execute(INSERT, (102, None, TS))
