"""The control schema's rules, enforced by the database for every client."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from toolkit import control
from toolkit.errors import KeyshiftError


@pytest.fixture
def conn(head_conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    head_conn.execute("SELECT keyshift.define_setting('test.enabled', 'bool', 'true', 'on or off')")
    head_conn.execute("SELECT keyshift.define_setting('test.size', 'int', '100', 'a size')")
    head_conn.execute(
        "SELECT keyshift.define_setting('test.mode', 'enum', 'strict', 'a mode', ARRAY['strict', 'lenient'])"
    )
    return head_conn


def test_set_setting_canonicalises_validates_and_audits(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET application_name = 'tester'")
    change = control.set_setting(conn, "test.enabled", "off", "maintenance window")
    assert change == {"key": "test.enabled", "old": "true", "new": "false", "reason": "maintenance window"}
    audit = conn.execute(
        "SELECT action, subject, old_value, new_value, reason, actor = session_user, client "
        "FROM keyshift.audit_log ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert audit == ("setting", "test.enabled", "true", "false", "maintenance window", True, "tester")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("test.enabled", "maybe", "setting test.enabled: maybe is not a valid bool value"),
        ("test.size", "12x", "setting test.size: 12x is not a valid int value"),
        ("test.mode", "loose", "setting test.mode: loose is not one of {strict,lenient}"),
    ],
)
def test_invalid_values_are_refused_and_change_nothing(
    conn: psycopg.Connection[Any], key: str, value: str, message: str
) -> None:
    before = conn.execute("SELECT count(*) FROM keyshift.audit_log").fetchone()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        control.set_setting(conn, key, value, "testing")
    assert conn.execute("SELECT count(*) FROM keyshift.audit_log").fetchone() == before


def test_a_reason_is_required(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(KeyshiftError, match="needs a reason"):
        control.set_setting(conn, "test.size", "5", "  ")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="a reason is required"):
        conn.execute("SELECT keyshift.set_setting('test.size', '5', '')")


def test_unknown_setting_lists_the_known_ones(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(KeyshiftError, match="unknown setting 'nope.x'; known settings: .*test.enabled"):
        control.get_setting(conn, "nope.x")
    with pytest.raises(psycopg.errors.UndefinedObject, match="unknown setting nope.x"):
        conn.execute("SELECT keyshift.setting('nope.x')")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE keyshift.audit_log SET reason = 'rewritten'",
        "DELETE FROM keyshift.audit_log",
        "TRUNCATE keyshift.audit_log",
    ],
)
def test_audit_log_is_append_only(conn: psycopg.Connection[Any], statement: str) -> None:
    control.set_setting(conn, "test.size", "7", "first")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute(statement)
    assert conn.execute("SELECT reason FROM keyshift.audit_log WHERE subject = 'test.size'").fetchall() == [
        ("first",)
    ]


def test_every_control_table_and_column_is_commented(head_conn: psycopg.Connection[Any]) -> None:
    missing = head_conn.execute(
        """
        SELECT c.relname, a.attname
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'keyshift'
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relkind = 'r' AND c.relname <> 'alembic_version'
           AND (obj_description(c.oid, 'pg_class') IS NULL
                OR (a.attname IS NOT NULL AND col_description(c.oid, a.attnum) IS NULL))
        """
    ).fetchall()
    assert missing == []


def test_status_shows_relocations_with_soak_left_and_the_last_reconciliation(head_dsn: str, cli: Any) -> None:
    from toolkit import reconcile

    with psycopg.connect(head_dsn, autocommit=True) as conn:
        before = control.status(conn)
        assert [(r["name"], r["step"], r["soak_left"]) for r in before["relocations"]] == [
            ("dxy_1m_bars", "installed", None)
        ]
        assert before["reconciliations"] == []
        conn.execute("SELECT keyshift.set_setting('dxy.soak_window', '24 hours', 'test')")
        conn.execute(
            "UPDATE keyshift.relocations SET step = 'switched', switched_at = now() - interval '90 minutes'"
        )
        reconcile.run_pair(conn, "key_coverage.market.subscriptions")
        reconcile.run_pair(conn, "key_coverage.market.subscriptions")
        after = control.status(conn)
    soak_left = after["relocations"][0]["soak_left"]
    assert soak_left in ("22:29:59", "22:30:00")  # seconds pass between the statements
    assert [(r["pair"], r["verdict"]) for r in after["reconciliations"]] == [
        ("key_coverage.market.subscriptions", "pass")
    ]
    result = cli("status", dsn=head_dsn)
    assert result.exit_code == 0, result.output
    assert (
        "soak_left" in result.output
        and " 22:2" in result.output
        and "key_coverage.market.subscriptions" in result.output
    )
