"""Least privilege: each keyshift role can do its job and is refused outside it; no function
can be hijacked through search_path.

The roles are NOLOGIN; each test logs in as a throwaway login role that is a
member of one of them (the way a DBA grants them), so that session_user is a
real person in the audit log.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.legacy import legacy_bars, seed_registry
from tests.load import connect, expand_revision
from toolkit import backfill, memberships

pytestmark = pytest.mark.faults

Login = Callable[[str, str | None], str]  # (name, member of) -> DSN logged in as that role


@pytest.fixture
def dsn(new_db: Callable[..., str]) -> str:
    """At the expand revision (roles included): a registry, legacy bars without keys, memberships."""
    dsn = new_db(expand_revision())
    with connect(dsn) as conn:
        seed_registry(conn)
        conn.execute("ALTER TABLE market.data_bars DISABLE TRIGGER keyshift_key_sync")
        legacy_bars(conn, minutes=50)
        conn.execute("ALTER TABLE market.data_bars ENABLE TRIGGER keyshift_key_sync")
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from,"
            " effective_to) VALUES ('NIFTY50', 102, 0.1, '2020-01-01', '2020-06-30'),"
            " ('NIFTY50', 103, 0.2, '2025-01-01', NULL)"
        )
        conn.execute("SELECT keyshift.set_setting('memberships.retention_days', '30', 'test')")
    return dsn


@pytest.fixture
def login(dsn: str) -> Iterator[Login]:
    made: list[str] = []

    def make(name: str, member_of: str | None) -> str:
        role = f"ks_{name}_{os.getpid()}"
        with connect(dsn) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            made.append(role)
            if member_of:
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), sql.Identifier(role))
                )
        return psycopg.conninfo.make_conninfo(dsn, user=role)

    yield make
    with connect(dsn) as conn:
        for role in made:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def refused(dsn: str, statement: str) -> str:
    """Run ``statement``; it must fail for want of a privilege. Returns the message."""
    with connect(dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute(statement)
    return str(info.value)


def scalar(dsn: str, query: str) -> Any:
    with connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_operator_runs_its_steps_and_is_refused_ddl_and_direct_writes(
    dsn: str,
    login: Login,
    cli: Callable,  # type: ignore[type-arg]
) -> None:
    alice = login("alice", "keyshift_operator")
    assert backfill.run(alice, "market.data_bars").status == "done"
    assert scalar(dsn, "SELECT null_keys FROM keyshift.key_readiness('market', 'data_bars')") == 0
    flag = cli("flags", "set", "backfill.pause_ms", "5", "--reason", "operator test", dsn=alice)
    assert flag.exit_code == 0, flag.stderr
    assert (
        scalar(dsn, "SELECT actor FROM keyshift.audit_log ORDER BY id DESC LIMIT 1")
        == f"ks_alice_{os.getpid()}"
    )
    assert memberships.sync(alice)["registry_rows"] == 2
    assert memberships.retention(alice)["rows_moved"] == 1
    assert cli("status", dsn=alice).exit_code == 0
    assert cli("dlq", "list", dsn=alice).exit_code == 0
    # Outside its job: DDL, and writes that bypass keyshift's functions (and the audit log).
    phase = cli("phase", "market.data_bars", "key_primary", "--reason", "not mine", dsn=alice)
    assert phase.exit_code == 1 and "must be owner" in phase.stderr
    refused(alice, "UPDATE keyshift.settings SET value = '0' WHERE key = 'backfill.pause_ms'")
    refused(alice, "INSERT INTO keyshift.audit_log (action, subject, reason) VALUES ('x', 'y', 'forged')")
    refused(alice, "CREATE TABLE keyshift.mine (id int)")
    refused(alice, "ALTER TABLE market.data_bars ADD COLUMN x int")
    refused(alice, "UPDATE market.data_bars SET volume = 0")
    refused(alice, "DELETE FROM screener.index_memberships")
    refused(alice, "DELETE FROM instrument_registry.index_memberships")
    refused(alice, "SELECT keyshift.dual_write_apply__memberships('INSERT', NULL, '{}', false)")


def test_reader_sees_status_and_reports_and_is_refused_everything_else(
    dsn: str,
    login: Login,
    cli: Callable,  # type: ignore[type-arg]
) -> None:
    bob = login("bob", "keyshift_reader")
    status = cli("status", "--json", dsn=bob)
    assert status.exit_code == 0, status.stderr
    assert scalar(bob, "SELECT count(*) FROM keyshift.migrated_tables") == 3
    registry = "SELECT count(*) FROM instrument_registry.instruments"
    assert scalar(bob, registry) == scalar(dsn, registry) > 0
    flag = cli("flags", "set", "backfill.pause_ms", "5", "--reason", "reader test", dsn=bob)
    assert flag.exit_code == 1 and "permission denied for function set_setting" in flag.stderr
    assert len(flag.stderr.strip().splitlines()) == 1
    filled = cli("backfill", "market.data_bars", dsn=bob)
    assert filled.exit_code == 1 and "permission denied" in filled.stderr
    refused(bob, "SELECT count(*) FROM market.data_bars")
    refused(bob, "UPDATE keyshift.settings SET value = '0'")
    refused(bob, "INSERT INTO keyshift.reconcile_runs DEFAULT VALUES")
    refused(bob, "SELECT keyshift.retry_dead_letter(1)")
    assert scalar(dsn, "SELECT value FROM keyshift.settings WHERE key = 'backfill.pause_ms'") == "0"


def test_migrator_owns_the_control_schema_and_is_refused_legacy_data(dsn: str, login: Login) -> None:
    mig = login("mig", "keyshift_migrator")
    with connect(mig) as conn:
        conn.execute("CREATE TABLE keyshift.next_revision_table (id int)")
        conn.execute("ALTER TABLE keyshift.settings ADD COLUMN next_revision_column int")
        conn.execute("SELECT keyshift.define_setting('next.revision', 'int', '1', 'a later revision')")
        conn.execute("CREATE INDEX ON instrument_registry.instruments (symbol)")
        conn.execute("UPDATE keyshift.alembic_version SET version_num = version_num")
        conn.execute("SELECT count(*) FROM market.data_bars")  # it may read what it migrates
    assert scalar(dsn, "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'keyshift'") == (
        "keyshift_migrator"
    )
    refused(
        mig,
        "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
        " VALUES (101, '1m', now(), 1, 1, 1, 1)",
    )
    refused(mig, "DELETE FROM trading.positions")
    refused(mig, "CREATE TABLE market.not_mine (id int)")
    refused(mig, "CREATE ROLE ks_should_not_exist")


def test_legacy_writers_keep_writing_with_their_own_rights_only(dsn: str, login: Login) -> None:
    app = login("app", None)
    role = f"ks_app_{os.getpid()}"
    with connect(dsn) as conn:
        for grant in (
            "GRANT USAGE ON SCHEMA market, screener TO {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON market.data_bars, screener.index_memberships TO {}",
        ):
            conn.execute(sql.SQL(grant).format(sql.Identifier(role)))
    with connect(app) as conn:
        conn.execute(
            "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close)"
            " VALUES (101, '1m', '2026-07-01', 1, 1, 1, 1)"
        )
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
            " VALUES ('SENSEX', 102, 0.3, '2026-01-01')"
        )
        conn.execute("DELETE FROM screener.index_memberships WHERE index_name = 'SENSEX'")
    assert (
        scalar(dsn, "SELECT instrument_key FROM market.data_bars WHERE ts = '2026-07-01'") == "BBB_NSE_EQUITY"
    )
    assert scalar(dsn, "SELECT count(*) FROM keyshift.dead_letters") == 0
    # The dual-write applied both, as its owner, in the writer's transaction.
    with connect(dsn) as conn:
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
            " VALUES ('SENSEX', 103, 0.3, '2026-01-01')"
        )
    with connect(app) as conn:
        conn.execute("UPDATE screener.index_memberships SET weight = 0.4 WHERE index_name = 'SENSEX'")
    assert scalar(
        dsn, "SELECT weight::text FROM instrument_registry.index_memberships WHERE index_name = 'SENSEX'"
    ) == ("0.4")
    refused(app, "SELECT keyshift.dual_write_apply__memberships('INSERT', NULL, '{}', false)")
    refused(app, "SELECT keyshift.set_setting('memberships.dual_write_enabled', 'false', 'app')")
    refused(app, "SELECT * FROM keyshift.settings")
    refused(
        app,
        "INSERT INTO instrument_registry.broker_instrument_tokens (broker, instrument_token,"
        " instrument_key) VALUES ('zerodha', 999, 'AAA_NSE_EQUITY')",
    )


def test_every_security_definer_function_pins_its_search_path(dsn: str) -> None:
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT p.oid::regprocedure::text, p.proconfig,"
            " has_function_privilege('public', p.oid, 'EXECUTE')"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prosecdef ORDER BY 1"
        ).fetchall()
    assert len(rows) >= 12
    for name, config, _ in rows:
        paths = [c.removeprefix("search_path=") for c in config or [] if c.startswith("search_path=")]
        assert paths, f"{name} is SECURITY DEFINER without a pinned search_path"
        schemas = [s.strip() for s in paths[0].split(",")]
        assert schemas[0] in ("keyshift", "instrument_registry", "market") and "pg_catalog" in schemas, name
        assert schemas[-1] == "pg_temp", f"{name}: pg_temp must come last ({paths[0]})"
    # Callable by every role: only what the legacy writers' triggers call.
    public = sorted(name for name, _, callable_by_all in rows if callable_by_all)
    assert public == [
        "keyshift.dead_letter(text,text,jsonb,jsonb,text)",
        "keyshift.key_sync_config(text,text)",
        "keyshift.key_sync_token_usage(text,text,text,text,bigint)",
        "market.write_dxy_bar(timestamp with time zone,numeric,numeric,numeric,numeric,bigint)",
    ]


EVIL = """
CREATE TABLE evil.calls (what text, run_as text DEFAULT current_user);
CREATE FUNCTION evil.setting(text) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO evil.calls VALUES ('setting'); SELECT '1'::text $$;
CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO evil.calls VALUES ('text ='); SELECT pg_catalog.texteq($1, $2) $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
CREATE FUNCTION evil.int8eq(bigint, bigint) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO evil.calls VALUES ('bigint ='); SELECT pg_catalog.int8eq($1, $2) $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8eq);
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql
    AS $$ INSERT INTO evil.calls VALUES ('now'); SELECT pg_catalog.now() $$;
"""


def test_a_shadowing_schema_first_on_search_path_cannot_hijack_keyshift_functions(
    dsn: str, login: Login
) -> None:
    mallory = login("mallory", "keyshift_operator")
    role = f"ks_mallory_{os.getpid()}"
    with connect(dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA evil AUTHORIZATION {}").format(sql.Identifier(role)))
    with connect(mallory) as conn:
        conn.execute(EVIL)
        conn.execute("GRANT SELECT, INSERT ON evil.calls TO PUBLIC")
        conn.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
        # The attack is real: in mallory's own session the shadowing operator wins.
        conn.execute("SET search_path = evil, pg_catalog")
        conn.execute("SELECT 'a'::text = 'a'::text")
    assert scalar(dsn, "SELECT count(*) FROM evil.calls") == 1
    with connect(dsn) as conn:
        conn.execute("TRUNCATE evil.calls")
    hijacking = psycopg.conninfo.make_conninfo(mallory, options="-c search_path=evil,pg_catalog,keyshift")
    with connect(hijacking) as conn:
        conn.execute("SELECT keyshift.set_setting('backfill.pause_ms', '7', 'hijack attempt')")
    assert backfill.run(hijacking, "market.data_bars").status == "done"  # its triggers fire inside
    assert memberships.sync(hijacking)["registry_rows"] == 2
    assert memberships.retention(hijacking)["rows_moved"] == 1
    # Mallory's own client queries ran her operators with her own rights (her session, her
    # search_path); no keyshift function ran them with its owner's rights.
    assert scalar(dsn, "SELECT count(*) FROM evil.calls") > 0
    with connect(dsn) as conn:
        escalated = conn.execute("SELECT count(*) FROM evil.calls WHERE run_as <> %s", (role,)).fetchone()
    assert escalated == (0,)
    assert scalar(dsn, "SELECT value FROM keyshift.settings WHERE key = 'backfill.pause_ms'") == "7"
    assert scalar(dsn, "SELECT null_keys FROM keyshift.key_readiness('market', 'data_bars')") == 0


def test_downgrade_revokes_everything_and_keeps_roles_others_depend_on(new_db: Callable[..., str]) -> None:
    from toolkit import migrate

    dsn = new_db(expand_revision())
    other = new_db(expand_revision())  # another database holding grants to the same roles
    migrate.downgrade(dsn, "-1")
    with connect(dsn) as conn:
        held = conn.execute(
            "SELECT count(*) FROM pg_shdepend d JOIN pg_database db ON db.oid = d.dbid"
            " WHERE db.datname = current_database() AND d.refclassid = 'pg_authid'::regclass"
            " AND d.refobjid IN (SELECT oid FROM pg_roles WHERE rolname LIKE 'keyshift\\_%')"
        ).fetchone()
        owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'keyshift'"
        ).fetchone()
        definer = conn.execute(
            "SELECT prosecdef FROM pg_proc WHERE oid = 'keyshift.set_setting'::regproc"
        ).fetchone()
        roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'keyshift\\_%'").fetchone()
    assert held == (0,)  # nothing of this database refers to the roles any more
    assert owner == (psycopg.conninfo.conninfo_to_dict(dsn)["user"],)
    assert definer == (False,)
    assert roles == (3,)  # kept: the other database still grants to them
    migrate.upgrade(dsn, expand_revision())  # and back: the roles exist, nothing fails
    assert scalar(other, "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'keyshift'") == (
        "keyshift_migrator"
    )
