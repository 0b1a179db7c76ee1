"""The revision chain: single head, real downgrades, offline SQL, timeouts."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import psycopg
import pytest
from alembic import command
from pglast import ast, enums

from tests.conftest import schema_dump
from toolkit import migrate, parsing


def revisions_in_order() -> list[str]:
    scripts = migrate.script()
    return [r.revision for r in reversed(list(scripts.walk_revisions("base", "heads")))]


def test_chain_has_a_single_head_and_one_base() -> None:
    scripts = migrate.script()
    assert len(scripts.get_heads()) == 1
    assert len(scripts.get_bases()) == 1
    assert revisions_in_order()[:2] == ["legacy_baseline", "control_schema"]


def test_every_revision_downgrade_restores_the_schema_before_it(empty_dsn: str) -> None:
    """Upgrade one step, downgrade one step: the catalog is what it was. Then move on."""
    # The control schema and its version table outlive a downgrade to base
    # (alembic keeps its table); make them exist before the first comparison.
    migrate.upgrade(empty_dsn, "legacy_baseline")
    migrate.downgrade(empty_dsn, "base")
    for revision in revisions_in_order():
        before = schema_dump(empty_dsn)
        migrate.upgrade(empty_dsn, revision)
        after_up = schema_dump(empty_dsn)
        assert after_up != before, f"{revision} upgrade changed nothing"
        migrate.downgrade(empty_dsn, "-1")
        assert schema_dump(empty_dsn) == before, f"{revision} downgrade left changes"
        migrate.upgrade(empty_dsn, revision)


def test_upgrade_downgrade_upgrade_leaves_the_same_schema(empty_dsn: str) -> None:
    migrate.upgrade(empty_dsn, "head")
    first = schema_dump(empty_dsn)
    migrate.downgrade(empty_dsn, "base")
    with psycopg.connect(empty_dsn) as conn:
        left = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
            "AND c.relname NOT LIKE 'alembic\\_version%'"
        ).fetchall()
    assert left == []
    migrate.upgrade(empty_dsn, "head")
    assert schema_dump(empty_dsn) == first


def offline_script(tmp_path) -> str:  # type: ignore[no-untyped-def]
    out = tmp_path / "plan.sql"
    cfg = migrate.config()
    with out.open("w") as fh:
        cfg.output_buffer = fh
        command.upgrade(cfg, "head", sql=True)
    return out.read_text()


def test_offline_script_parses_and_psql_applies_it(tmp_path, new_db: Callable[..., str]) -> None:  # type: ignore[no-untyped-def]
    text = offline_script(tmp_path)
    statements = parsing.validate(text, origin="plan.sql")
    assert len(statements) > 20
    offline_db = new_db()
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(tmp_path / "plan.sql"), offline_db],
        check=True,
        capture_output=True,
        text=True,
    )
    online_db = new_db()
    migrate.upgrade(online_db, "head")
    assert schema_dump(offline_db) == schema_dump(online_db)
    with psycopg.connect(offline_db) as conn:
        (version,) = conn.execute("SELECT version_num FROM keyshift.alembic_version").fetchone()
    assert version == migrate.script().get_current_head()


def test_each_revision_sets_its_timeouts_inside_its_own_transaction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = offline_script(tmp_path)
    sections = text.split("-- Running upgrade")[1:]
    assert len(sections) == len(revisions_in_order())
    for section in sections:
        body = section.split("\n", 1)[1]
        first = [ln for ln in body.splitlines() if ln.strip() and not ln.startswith("--")][:2]
        assert first == ["SET LOCAL \"lock_timeout\" = '5s';", "SET LOCAL \"statement_timeout\" = '15min';"]
    # Session-level timeouts come first, for statements outside a transaction.
    assert text.lstrip().startswith("SET \"lock_timeout\" = '5s';")


def test_concurrent_index_builds_run_outside_any_transaction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    open_transaction = False
    concurrent = 0
    for stmt in parsing.statements(offline_script(tmp_path)):
        if isinstance(stmt.node, ast.TransactionStmt):
            open_transaction = stmt.node.kind == enums.TransactionStmtKind.TRANS_STMT_BEGIN
        elif parsing.needs_autocommit(stmt):
            concurrent += 1
            assert not open_transaction, stmt.text
    assert concurrent >= 3


def test_timeouts_are_configurable_and_validated(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = migrate.config()
    cfg.cmd_opts = type("Opts", (), {"x": ["lock_timeout=750ms"]})()  # as `alembic -x` sets it
    out = tmp_path / "p.sql"
    with out.open("w") as fh:
        cfg.output_buffer = fh
        command.upgrade(cfg, "head", sql=True)
    assert "SET LOCAL \"lock_timeout\" = '750ms';" in out.read_text()
    cfg.cmd_opts = type("Opts", (), {"x": ["lock_timeout=5s; drop table x"]})()
    with pytest.raises(SystemExit) as exit_info:
        command.upgrade(cfg, "head", sql=True)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "alembic: error: -x lock_timeout='5s; drop table x' is not a duration such as 5s, 500ms or 2min"
    ]


def test_revision_waiting_on_a_lock_fails_after_lock_timeout_and_leaves_nothing(
    new_db: Callable[..., str],
) -> None:
    dsn = new_db("legacy_baseline")
    cfg = migrate.config(dsn)
    cfg.cmd_opts = type("Opts", (), {"x": ["lock_timeout=200ms"]})()
    with psycopg.connect(dsn) as holder:
        # Another session holds a legacy table the downgrade must read.
        holder.execute("LOCK TABLE market.data_bars IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(Exception, match="lock timeout"):
            command.downgrade(cfg, "base")
        holder.rollback()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('market.subscriptions') IS NOT NULL").fetchone() == (True,)
        assert conn.execute("SELECT version_num FROM keyshift.alembic_version").fetchone() == (
            "legacy_baseline",
        )
    command.downgrade(cfg, "base")  # succeeds once the lock is gone
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('market.subscriptions')").fetchone() == (None,)


def test_baseline_keeps_existing_legacy_tables_and_refuses_to_drop_data(empty_dsn: str) -> None:
    migrate.upgrade(empty_dsn, "legacy_baseline")
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("INSERT INTO market.subscriptions (instrument_token, subscriber) VALUES (1, 'a')")
        conn.commit()
    with pytest.raises(Exception, match="legacy_baseline downgrade refused: market.subscriptions holds rows"):
        migrate.downgrade(empty_dsn, "base")
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM market.subscriptions").fetchone() == (1,)
        # Applying the baseline where the tables exist changes nothing.
        conn.execute("DELETE FROM keyshift.alembic_version")
        conn.commit()
    before = schema_dump(empty_dsn)
    migrate.upgrade(empty_dsn, "legacy_baseline")
    assert schema_dump(empty_dsn) == before
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM market.subscriptions").fetchone() == (1,)
