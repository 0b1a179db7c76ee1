"""Index memberships: dual-write, dead letters and retries, single-write and catch-up, retention."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import schema_dump
from tests.legacy import seed_registry
from toolkit import dlq, memberships, migrate

REVISION = "index_memberships_dual_write"
LEGACY_INSERT = (
    "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from, effective_to)"
    " VALUES (%s, %s, %s, %s, %s)"
)


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


@pytest.fixture
def dsn(new_db: Callable[..., str]) -> str:
    dsn = new_db(REVISION)
    with connect(dsn) as conn:
        seed_registry(conn)
    return dsn


def registry_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT index_name, instrument_key, weight::text, effective_from::text, effective_to::text, source_token"
        " FROM instrument_registry.index_memberships ORDER BY 1, 2, 4"
    ).fetchall()


def legacy_as_registry(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The legacy rows as the registry should hold them (mapped at effective_from)."""
    return conn.execute(
        "SELECT m.index_name, instrument_registry.resolve_key('zerodha', m.instrument_token,"
        " m.effective_from::timestamp AT TIME ZONE 'UTC'), m.weight::text, m.effective_from::text,"
        " m.effective_to::text, m.instrument_token FROM screener.index_memberships m ORDER BY 1, 2, 4"
    ).fetchall()


def set_flag(conn: psycopg.Connection[Any], key: str, value: str) -> None:
    conn.execute("SELECT keyshift.set_setting(%s, %s, 'test')", (key, value))


def letters(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, operation, row_identity, reason, attempts, resolved_at IS NOT NULL"
        " FROM keyshift.dead_letters WHERE source = 'memberships' ORDER BY id"
    ).fetchall()


def test_insert_update_delete_reach_the_registry_in_the_same_transaction(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute(LEGACY_INSERT, ("NIFTY50", 102, 0.051, "2025-06-01", None))
        # Token 101 meant AAA before 2026-01-01 and BBB after: resolved at effective_from.
        conn.execute(LEGACY_INSERT, ("NIFTY50", 101, 0.02, "2025-06-01", "2025-12-31"))
        conn.execute(LEGACY_INSERT, ("NIFTY50", 101, 0.03, "2026-01-01", None))
        assert registry_rows(conn) == [
            ("NIFTY50", "AAA_NSE_EQUITY", "0.02", "2025-06-01", "2025-12-31", 101),
            ("NIFTY50", "BBB_NSE_EQUITY", "0.03", "2026-01-01", None, 101),
            ("NIFTY50", "M&M_NSE_EQUITY", "0.051", "2025-06-01", None, 102),
        ]
        conn.execute("UPDATE screener.index_memberships SET weight = 0.06 WHERE instrument_token = 102")
        conn.execute("UPDATE screener.index_memberships SET instrument_token = 103 WHERE weight = 0.06")
        conn.execute("DELETE FROM screener.index_memberships WHERE effective_to = '2025-12-31'")
        assert registry_rows(conn) == legacy_as_registry(conn)
        assert ("NIFTY50", "NIFTY24JANFUT_NFO_FUTURE", "0.06", "2025-06-01", None, 103) in registry_rows(conn)
        # A rolled-back legacy write leaves no trace in the registry either.
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute(LEGACY_INSERT, ("SENSEX", 102, 0.1, "2025-06-01", None))
            conn.execute(LEGACY_INSERT, ("SENSEX", 102, 0.1, "2025-06-01", None))
        assert registry_rows(conn) == legacy_as_registry(conn)


def test_strict_refuses_an_unmapped_token_lenient_dead_letters_it(dsn: str) -> None:
    with connect(dsn) as conn:
        set_flag(conn, "memberships.validation_mode", "strict")
        with pytest.raises(
            psycopg.Error,
            match="dual-write of screener.index_memberships .* refused: no instrument_key for instrument_token 555",
        ):
            conn.execute(LEGACY_INSERT, ("NIFTY50", 555, 0.1, "2025-06-01", None))
        assert conn.execute("SELECT count(*) FROM screener.index_memberships").fetchone() == (0,)
        set_flag(conn, "memberships.validation_mode", "lenient")
        conn.execute(LEGACY_INSERT, ("NIFTY50", 555, 0.1, "2025-06-01", None))
        assert conn.execute("SELECT count(*) FROM screener.index_memberships").fetchone() == (1,)
        assert registry_rows(conn) == []
        (letter,) = letters(conn)
        assert letter[1] == "INSERT"
        assert letter[2] == {"index_name": "NIFTY50", "instrument_token": 555, "effective_from": "2025-06-01"}
        assert "no instrument_key for instrument_token 555 of broker zerodha" in letter[3]


def test_dead_letters_apply_once_the_mapping_exists_and_give_up_after_the_attempts(dsn: str) -> None:
    with connect(dsn) as conn:
        set_flag(conn, "memberships.retry_attempts", "2")
        conn.execute(LEGACY_INSERT, ("NIFTY50", 555, 0.1, "2025-06-01", None))
        conn.execute(LEGACY_INSERT, ("NIFTY50", 556, 0.2, "2025-06-01", None))
        first, second = (row[0] for row in letters(conn))
    # No mapping yet: a retry fails and counts.
    assert dlq.retry(dsn, (first,))[0]["outcome"].startswith("failed (attempt 1 of 2)")
    with connect(dsn) as conn:
        conn.execute(
            "INSERT INTO instrument_registry.instruments VALUES ('NEW_NSE_EQUITY', 'NEW', 'NSE', 'EQUITY')"
        )
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens (broker, instrument_token, instrument_key)"
            " VALUES ('zerodha', 555, 'NEW_NSE_EQUITY')"
        )
    assert dlq.retry(dsn, (first,)) == [{"id": first, "outcome": "applied"}]
    # 556 never gets a mapping: two failures, then it stays dead with its count.
    assert dlq.retry(dsn, (second,))[0]["outcome"].startswith("failed (attempt 1 of 2)")
    assert dlq.retry(dsn, (second,))[0]["outcome"].startswith("dead after 2 attempts")
    assert dlq.retry(dsn, (second,))[0]["outcome"] == "dead after 2 attempts"
    with connect(dsn) as conn:
        assert ("NIFTY50", "NEW_NSE_EQUITY", "0.1", "2025-06-01", None, 555) in registry_rows(conn)
        state = {row[0]: (row[4], row[5]) for row in letters(conn)}
        assert state == {first: (2, True), second: (2, False)}


def test_a_retry_never_resurrects_a_row_deleted_meanwhile(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute(LEGACY_INSERT, ("NIFTY50", 555, 0.1, "2025-06-01", None))
        conn.execute("DELETE FROM screener.index_memberships WHERE instrument_token = 555")
        (letter,) = letters(conn)
        conn.execute(
            "INSERT INTO instrument_registry.instruments VALUES ('NEW_NSE_EQUITY', 'NEW', 'NSE', 'EQUITY')"
        )
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens (broker, instrument_token, instrument_key)"
            " VALUES ('zerodha', 555, 'NEW_NSE_EQUITY')"
        )
    assert dlq.retry(dsn, (letter[0],))[0]["outcome"] == "applied"
    with connect(dsn) as conn:
        assert registry_rows(conn) == []


def test_many_to_one_collision_is_its_own_dead_letter(dsn: str) -> None:
    with connect(dsn) as conn:
        # Token 104 also means M&M from 2025-06-01: two legacy tokens, one key, one day.
        conn.execute(
            "UPDATE instrument_registry.broker_instrument_tokens SET valid_to = '2025-06-01' WHERE instrument_token = 102"
        )
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens (broker, instrument_token, instrument_key, valid_from)"
            " VALUES ('zerodha', 104, 'M&M_NSE_EQUITY', '2025-06-01')"
        )
        conn.execute(LEGACY_INSERT, ("NIFTY50", 104, 0.1, "2025-06-01", None))
        conn.execute(
            "UPDATE instrument_registry.broker_instrument_tokens SET instrument_token = 102 WHERE instrument_token = 104"
        )
        conn.execute(LEGACY_INSERT, ("NIFTY50", 102, 0.2, "2025-06-01", None))
        reasons = [row[3] for row in letters(conn)]
    assert len(reasons) == 1
    assert reasons[0].startswith(
        "many-to-one collision: instrument_tokens 104 and 102 both mean M&M_NSE_EQUITY"
    )


def test_single_write_then_catch_up_ends_in_step(dsn: str, cli: Callable) -> None:  # type: ignore[type-arg]
    with connect(dsn) as conn:
        for i, token in enumerate((101, 102, 103)):
            conn.execute(LEGACY_INSERT, ("NIFTY50", token, 0.1 + i, "2026-02-01", None))
    result = cli("rollback", "memberships", dsn=dsn)
    assert result.exit_code == 0, result.stderr
    assert "memberships.dual_write_enabled: true -> false" in result.stdout
    with connect(dsn) as conn:
        before = registry_rows(conn)
        conn.execute(LEGACY_INSERT, ("SENSEX", 102, 0.5, "2026-02-01", None))
        conn.execute("UPDATE screener.index_memberships SET weight = 9 WHERE instrument_token = 101")
        conn.execute("DELETE FROM screener.index_memberships WHERE instrument_token = 103")
        # In single-write the registry receives nothing from the legacy table ...
        assert registry_rows(conn) == before
        # ... and the legacy table receives nothing from writes made to the registry.
        conn.execute(
            "INSERT INTO instrument_registry.index_memberships (index_name, instrument_key, weight, effective_from)"
            " VALUES ('NEWINDEX', 'AAA_NSE_EQUITY', 1, '2026-02-01')"
        )
        assert conn.execute(
            "SELECT count(*) FROM screener.index_memberships WHERE index_name = 'NEWINDEX'"
        ).fetchone() == (0,)
        audit = conn.execute(
            "SELECT old_value, new_value, reason FROM keyshift.audit_log WHERE subject = 'memberships.dual_write_enabled'"
        ).fetchall()
        assert audit == [("true", "false", "rollback to single-write")]
        set_flag(conn, "memberships.dual_write_enabled", "true")
    result = memberships.sync(dsn, batch_size=2)
    assert result["orphans_archived"] == 1  # 103's row, deleted from the legacy table meanwhile
    with connect(dsn) as conn:
        live = [r for r in registry_rows(conn) if r[0] != "NEWINDEX"]
        assert live == legacy_as_registry(conn)
        archived = conn.execute(
            "SELECT instrument_key, archive_reason FROM instrument_registry.index_memberships_archive"
        ).fetchall()
        assert archived == [
            ("NIFTY24JANFUT_NFO_FUTURE", "catch-up: its row in screener.index_memberships is gone")
        ]


def test_initial_sync_is_batched_resumable_and_dead_letters_the_unmapped(dsn: str) -> None:
    with connect(dsn) as conn:
        set_flag(conn, "memberships.dual_write_enabled", "false")
        for day in range(1, 11):
            conn.execute(LEGACY_INSERT, ("NIFTY50", 102, day, f"2025-06-{day:02d}", None))
        conn.execute(LEGACY_INSERT, ("NIFTY50", 555, 1, "2025-06-01", None))
        set_flag(conn, "memberships.dual_write_enabled", "true")
        # An interrupted earlier run: its cursor is after the fourth row.
        conn.execute(
            "INSERT INTO keyshift.flow_state (flow, status, last_key) VALUES ('memberships.sync', 'running',"
            ' \'{"index_name": "NIFTY50", "instrument_token": 102, "effective_from": "2025-06-04"}\')'
        )
    result = memberships.sync(dsn, batch_size=3)
    assert result["resumed"] is True
    assert (result["rows_applied"], result["rows_dead_lettered"]) == (6, 1)
    assert result["batches"] == 3
    with connect(dsn) as conn:
        assert len(registry_rows(conn)) == 6
    again = memberships.sync(dsn, batch_size=3)  # a fresh pass: everything, idempotently
    assert (again["resumed"], again["rows_applied"], again["rows_dead_lettered"]) == (False, 10, 1)
    with connect(dsn) as conn:
        assert len(registry_rows(conn)) == 10
        assert len(letters(conn)) == 1  # refreshed, not repeated


def expired_setup(conn: psycopg.Connection[Any]) -> None:
    set_flag(conn, "memberships.retention_days", "30")
    conn.execute(LEGACY_INSERT, ("NIFTY50", 102, 0.1, "2020-01-01", "2020-12-31"))
    conn.execute(LEGACY_INSERT, ("NIFTY50", 102, 0.2, "2021-01-01", "2021-06-30"))
    conn.execute(LEGACY_INSERT, ("NIFTY50", 103, 0.3, "2021-01-01", None))
    conn.execute(LEGACY_INSERT, ("NIFTY50", 101, 0.4, "2025-06-01", None))
    conn.execute(
        "INSERT INTO screener.index_memberships SELECT 'NIFTY50', 102, 0.5, current_date - 60, current_date - 10"
    )


def test_retention_moves_exactly_the_expired_rows(dsn: str, cli: Callable) -> None:  # type: ignore[type-arg]
    with connect(dsn) as conn:
        expired_setup(conn)
    dry = cli("retention", "run", "memberships", "--dry-run", dsn=dsn)
    assert dry.exit_code == 0 and "2 memberships ended more than 30 days ago would move" in dry.stdout
    result = memberships.retention(dsn, batch_size=1)
    assert (result["rows_moved"], result["batches"]) == (2, 2)
    with connect(dsn) as conn:
        recent = str(conn.execute("SELECT current_date - 10").fetchone()[0])  # type: ignore[index]
        assert sorted(r[4] or "open" for r in registry_rows(conn)) == sorted(["open", "open", recent])
        archived = conn.execute(
            "SELECT effective_to::text, archive_reason LIKE 'retention: ended %' FROM instrument_registry.index_memberships_archive ORDER BY 1"
        ).fetchall()
        assert archived == [("2020-12-31", True), ("2021-06-30", True)]
        # The archive counts as present: a catch-up does not bring them back.
        assert memberships.sync(dsn)["rows_archived_skipped"] == 2
        assert len(registry_rows(conn)) == 3


def test_retention_failing_mid_batch_loses_nothing(dsn: str) -> None:
    with connect(dsn) as conn:
        expired_setup(conn)
        # The archive refuses one of the rows: the whole batch must stay live.
        conn.execute(
            "ALTER TABLE instrument_registry.index_memberships_archive ADD CONSTRAINT no_2021 CHECK (effective_to <> '2021-06-30')"
        )
        before = registry_rows(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        memberships.retention(dsn, batch_size=10)
    with connect(dsn) as conn:
        assert registry_rows(conn) == before
        assert conn.execute(
            "SELECT count(*) FROM instrument_registry.index_memberships_archive"
        ).fetchone() == (0,)


def test_retention_killed_mid_batch_loses_nothing(dsn: str) -> None:
    with connect(dsn) as conn:
        expired_setup(conn)
        total_before = len(registry_rows(conn))
        # Slow the archive insert down so the batch can be killed inside it.
        conn.execute(
            "CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON instrument_registry.index_memberships_archive FOR EACH ROW EXECUTE FUNCTION public.slow()"
        )

    def killer() -> None:
        time.sleep(0.4)
        with connect(dsn) as k:
            k.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE '%memberships_retention_batch%' AND pid <> pg_backend_pid()"
            )

    thread = threading.Thread(target=killer)
    thread.start()
    with pytest.raises(psycopg.OperationalError):
        memberships.retention(dsn, batch_size=10)
    thread.join()
    with connect(dsn) as conn:
        live = len(registry_rows(conn))
        archived = conn.execute(
            "SELECT count(*) FROM instrument_registry.index_memberships_archive"
        ).fetchone()[0]  # type: ignore[index]
        assert live + archived == total_before and archived == 0
        conn.execute("DROP TRIGGER slow ON instrument_registry.index_memberships_archive")
    assert memberships.retention(dsn)["rows_moved"] == 2  # and a rerun completes


def test_downgrade_removes_trigger_and_tables_and_keeps_the_legacy_rows(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute(LEGACY_INSERT, ("NIFTY50", 102, 0.1, "2025-06-01", None))
        conn.execute(LEGACY_INSERT, ("NIFTY50", 555, 0.1, "2025-06-01", None))
        legacy = conn.execute("SELECT * FROM screener.index_memberships ORDER BY 1, 2, 3").fetchall()
    migrate.downgrade(dsn, "key_columns")
    with connect(dsn) as conn:
        assert conn.execute("SELECT * FROM screener.index_memberships ORDER BY 1, 2, 3").fetchall() == legacy
        assert conn.execute("SELECT to_regclass('instrument_registry.index_memberships')").fetchone() == (
            None,
        )
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'screener.index_memberships'::regclass AND NOT tgisinternal"
        ).fetchone() == (0,)
    migrate.upgrade(dsn, REVISION)  # and up again
    assert "keyshift_memberships_dual_write" in schema_dump(dsn)


def test_flags_cli(cli: Callable, dsn: str) -> None:  # type: ignore[type-arg]
    bad = cli("flags", "set", "memberships.validation_mode", "loose", "--reason", "x", dsn=dsn)
    assert bad.exit_code == 2 and "not one of {strict,lenient}" in bad.stderr
    unknown = cli("flags", "set", "memberships.nope", "1", "--reason", "x", dsn=dsn)
    assert unknown.exit_code == 2 and "unknown setting 'memberships.nope'" in unknown.stderr
    ok = cli("flags", "set", "memberships.batch_size", "50", "--reason", "smaller batches", dsn=dsn)
    assert ok.exit_code == 0 and "memberships.batch_size: 1000 -> 50 (smaller batches)" in ok.stdout
    got = cli("flags", "get", "memberships.batch_size", "--json", dsn=dsn)
    assert '"value": "50"' in got.stdout


def test_dlq_cli_list_and_resolve(cli: Callable, dsn: str) -> None:  # type: ignore[type-arg]
    with connect(dsn) as conn:
        conn.execute(LEGACY_INSERT, ("NIFTY50", 555, 0.1, "2025-06-01", None))
        (letter,) = letters(conn)
    listed = cli("dlq", "list", "--source", "memberships", dsn=dsn)
    assert listed.exit_code == 0 and "no instrument_key for instrument_token 555" in listed.stdout
    no_note = cli("dlq", "resolve", str(letter[0]), "--note", " ", dsn=dsn)
    assert no_note.exit_code == 2 and "needs a note" in no_note.stderr
    done = cli("dlq", "resolve", str(letter[0]), "--note", "token retired, row dropped upstream", dsn=dsn)
    assert done.exit_code == 0
    again = cli("dlq", "resolve", str(letter[0]), "--note", "again", dsn=dsn)
    assert again.exit_code == 2 and f"no open dead letter {letter[0]}" in again.stderr
    missing = cli("dlq", "retry", "--id", "999999", dsn=dsn)
    assert missing.exit_code == 2 and "no dead letter 999999" in missing.stderr
    with connect(dsn) as conn:
        assert conn.execute(
            "SELECT reason FROM keyshift.audit_log WHERE action = 'dead_letter'"
        ).fetchall() == [("token retired, row dropped upstream",)]
