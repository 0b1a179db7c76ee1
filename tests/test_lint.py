"""keyshift lint: rule cases as data (tests/lint_cases/*.yaml), the shipped chain, the command."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
import yaml
from click.testing import Result

from toolkit import lint, migrate
from toolkit.lint_rules import all_rules, lock_budget

CASES_DIR = Path(__file__).parent / "lint_cases"
ROOT = Path(__file__).resolve().parent.parent


def _load() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for case in data["cases"]:
            cases.append((f"{path.stem}: {case['name']}", case))
    return cases


CASES = _load()


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_rule_case(case: dict[str, Any]) -> None:
    findings = lint.lint_sql(case["sql"], "case.sql")
    assert sorted(f.rule for f in findings if f.silenced is None) == sorted(case["expect"])
    assert sorted(f.rule for f in findings if f.silenced) == sorted(case.get("silenced", []))


# Reported by the linter itself (cases in syntax.yaml) or by --trace-locks (tested below).
SPECIAL_RULES = {"syntax_error", "plpgsql_syntax", "silence_without_reason", "lock_budget"}


def test_every_rule_has_a_failing_and_a_passing_case() -> None:
    for rule in all_rules():
        assert rule.message and rule.hint and rule.severity in ("error", "warning")
        if rule.id in SPECIAL_RULES:
            continue
        path = CASES_DIR / f"{rule.id}.yaml"
        cases = yaml.safe_load(path.read_text())["cases"]
        assert any(rule.id in c["expect"] for c in cases), f"no case in {path.name} where {rule.id} fires"
        assert any(rule.id not in c["expect"] for c in cases), f"no passing case in {path.name}"
    assert {rule for _, c in CASES for rule in c["expect"]} >= SPECIAL_RULES - {"lock_budget"}


def test_finding_points_at_the_statement_inside_a_body() -> None:
    sql = (
        "SET lock_timeout = '1s';\n"  # 1
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$\n"  # 2
        "BEGIN\n"  # 3
        "  PERFORM 1;\n"  # 4
        '  -- keyshift-lint: ignore=drop_or_rename reason="a scratch table of the old release"\n'  # 5
        "  DROP TABLE market.scratch;\n"  # 6
        "  CREATE INDEX i ON market.data_bars (close);\n"  # 7
        "END $$;\n"
    )
    found = {(f.rule, f.line, f.silenced) for f in lint.lint_sql(sql, "f.sql")}
    assert ("drop_or_rename", 6, "a scratch table of the old release") in found
    assert ("index_not_concurrent", 7, None) in found
    assert ("missing_lock_timeout", 6, None) in found  # the function runs later, without it


def test_shipped_revision_chain_lints_clean() -> None:
    report = lint.lint()
    assert report.scripts == len(migrate.chain()) >= 6
    assert not report.failed, [f.as_dict() for f in report.findings if not f.silenced]
    for finding in report.findings:  # whatever is silenced says why
        assert finding.silenced and finding.silenced.strip()


def test_each_revision_renders_offline_sql_with_its_sources() -> None:
    rendered = migrate.revision_sql("key_columns")
    assert rendered.path == "alembic/versions/0004_key_columns.py"
    origins = {lint.origin_file(o) for o, _ in rendered.recorded}
    assert "sql/key_sync.sql" in origins
    assert "sql/templates/key_columns_table.sql.j2 (rendered)" in origins
    assert (
        "ALTER TABLE" in rendered.sql
        and "-- Running upgrade instrument_registry -> key_columns" in rendered.sql
    )


def test_silenced_findings_of_a_revision_point_at_the_template() -> None:
    report = lint.lint([ROOT / "alembic" / "versions" / "0090_key_primary_contract.py"])
    assert report.scripts == 1
    silenced = [f for f in report.findings if f.silenced]
    assert silenced and all(f.file == "sql/templates/key_primary.sql.j2 (rendered)" for f in silenced)
    assert all(f.rule == "concurrently_if_not_exists" for f in silenced)
    assert all(f.revision == "key_primary_contract" for f in silenced)


# ---------------------------------------------------------------- the command


def _bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.sql"
    path.write_text(
        "BEGIN;\nALTER TABLE market.data_bars ADD COLUMN id uuid DEFAULT gen_random_uuid();\nCOMMIT;\n"
    )
    return path


def test_cli_reports_file_line_and_exits_1(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli("lint", str(_bad_file(tmp_path)))
    assert result.exit_code == 1
    assert "bad.sql:2" in result.output
    assert "add_column_volatile_default" in result.output and "missing_lock_timeout" in result.output
    assert "2 findings, 0 silenced, in 1 scripts" in result.output


def test_cli_json(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli("lint", "--json", str(_bad_file(tmp_path)))
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["findings"] == 2 and data["silenced"] == 0
    assert {r["rule"] for r in data["results"]} == {"add_column_volatile_default", "missing_lock_timeout"}
    assert all(r["line"] == 2 and r["hint"] for r in data["results"])


def test_cli_clean_file_exits_0(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "ok.sql"
    path.write_text("SET lock_timeout = '2s';\nCREATE INDEX CONCURRENTLY i ON market.data_bars (close);\n")
    result = cli("lint", str(path))
    assert result.exit_code == 0, result.output
    assert "0 findings" in result.output


def test_cli_template_shows_the_reason(cli: Callable[..., Result]) -> None:
    result = cli("lint", str(ROOT / "sql" / "templates" / "key_primary.sql.j2"))
    assert result.exit_code == 0, result.output
    assert "guarded above: an INVALID leftover stops the step" in result.output


def test_cli_revisions_flag_lints_the_chain(cli: Callable[..., Result]) -> None:
    result = cli("lint", "--revisions", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["scripts"] == len(migrate.chain())


@pytest.mark.parametrize(
    "arg, message",
    [
        ("nope.sql", "nope.sql: no such file or directory"),
        ("tests/test_lint.py", "not a revision of keyshift's chain"),
    ],
)
def test_cli_bad_path_is_one_line_exit_2(cli: Callable[..., Result], arg: str, message: str) -> None:
    result = cli("lint", str(ROOT / arg) if "/" in arg else arg)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_unreadable_file_is_exit_2(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "latin1.sql"
    path.write_bytes(b"SELECT '\xe9';\n")
    result = cli("lint", str(path))
    assert result.exit_code == 2
    assert "cannot read it" in result.output


# ---------------------------------------------------------------- --trace-locks (real Postgres)


def test_trace_locks_on_the_chain(cli: Callable[..., Result], empty_dsn: str) -> None:
    result = cli("lint", "--trace-locks", "--json", dsn=empty_dsn)
    assert result.exit_code == 0, result.output
    traces = {t["revision"]: t for t in json.loads(result.output)["traces"]}
    assert list(traces) == migrate.chain()
    assert traces["legacy_baseline"]["locks"] == []  # nothing existed before it
    key_columns = {(lk["table"], lk["mode"]) for lk in traces["key_columns"]["locks"]}
    # PostgreSQL 15: CREATE TRIGGER takes SHARE ROW EXCLUSIVE, ADD COLUMN ACCESS EXCLUSIVE.
    assert ("market.data_bars", "SHARE ROW EXCLUSIVE") in key_columns
    assert ("market.data_bars", "ACCESS EXCLUSIVE") in key_columns
    contract = traces["key_primary_contract"]
    assert {(u["table"], u["mode"]) for u in contract["unobserved"]} >= {
        ("market.data_bars", "SHARE UPDATE EXCLUSIVE")
    }
    assert all(not t["rewritten"] for t in traces.values())
    with psycopg.connect(empty_dsn) as conn:  # the throwaway database is gone
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'keyshift\\_lint\\_%'"
        ).fetchone()
    assert left == (0,)


def _scratch_revision(sql: str) -> migrate.RevisionSql:
    return migrate.RevisionSql("scratch", "scratch.py", sql, [])


def test_trace_finds_a_rewrite_and_a_lock_over_budget(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bars (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO bars SELECT g, g FROM generate_series(1, 1000) g")
        trace = lock_budget.trace_revision(
            conn,
            _scratch_revision(
                "BEGIN;\nALTER TABLE bars ALTER COLUMN n TYPE bigint;\nCOMMIT;\n"
                "CREATE INDEX CONCURRENTLY bars_n_idx ON bars (n);\n"
            ),
            budget="SHARE ROW EXCLUSIVE",
        )
    assert trace.rewritten == ["public.bars"]
    assert [(lk["line"], lk["table"], lk["mode"]) for lk in trace.locks] == [
        (2, "public.bars", "ACCESS EXCLUSIVE")
    ]
    assert [(u["line"], u["table"], u["mode"]) for u in trace.unobserved] == [
        (4, "public.bars", "SHARE UPDATE EXCLUSIVE")
    ]
    findings = lint.trace_findings(trace)
    assert {(f.rule, f.file, f.revision) for f in findings} == {
        ("lock_budget", "scratch.py (offline SQL)", "scratch")
    }
    details = sorted(f.detail for f in findings)
    assert details == [
        "ACCESS EXCLUSIVE on public.bars exceeds LOCK_BUDGET SHARE ROW EXCLUSIVE",
        "rewrote public.bars (relfilenode changed)",
    ]


def test_trace_within_budget_has_no_finding(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bars (id int PRIMARY KEY, n int)")
        conn.execute("CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$")
        trace = lock_budget.trace_revision(
            conn,
            _scratch_revision(
                "BEGIN;\nSET LOCAL lock_timeout = '2s';\n"
                "CREATE TRIGGER t BEFORE INSERT ON bars FOR EACH ROW EXECUTE FUNCTION noop();\nCOMMIT;\n"
            ),
            budget="SHARE ROW EXCLUSIVE",
        )
    assert [(lk["table"], lk["mode"]) for lk in trace.locks] == [("public.bars", "SHARE ROW EXCLUSIVE")]
    assert lint.trace_findings(trace) == [] and trace.rewritten == []


# ---------------------------------------------------------------- revisions retry DDL on lock timeout


def _upgrade_with(dsn: str, revision: str, *x: str) -> None:
    from alembic import command

    cfg = migrate.config(dsn)
    cfg.cmd_opts = argparse.Namespace(x=list(x))
    command.upgrade(cfg, revision)


def _hold_lock(dsn: str, seconds: float) -> threading.Thread:
    """A reader holding ACCESS SHARE on market.data_bars for ``seconds`` (blocks ALTER TABLE)."""
    ready = threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("LOCK TABLE market.data_bars IN ACCESS SHARE MODE")
            ready.set()
            time.sleep(seconds)
            conn.rollback()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait(10)
    return thread


def _key_column_exists(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_schema = 'market' AND table_name = 'data_bars' AND column_name = 'instrument_key'"
        ).fetchone()
    return row == (1,)


def test_revision_retries_a_busy_lock_then_succeeds(new_db: Callable[..., str]) -> None:
    dsn = new_db("instrument_registry")
    holder = _hold_lock(dsn, 1.5)
    started = time.monotonic()
    _upgrade_with(dsn, "key_columns", "lock_timeout=200ms", "lock_retries=8")
    waited = time.monotonic() - started
    holder.join()
    assert waited >= 1.0  # it waited for the reader, in attempts of 200 ms
    assert _key_column_exists(dsn)
    with psycopg.connect(dsn) as conn:
        assert migrate.current_revision(conn) == "key_columns"


def test_revision_gives_up_after_its_retries_and_changes_nothing(new_db: Callable[..., str]) -> None:
    dsn = new_db("instrument_registry")
    holder = _hold_lock(dsn, 3)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="lock timeout"):
            _upgrade_with(dsn, "key_columns", "lock_timeout=100ms", "lock_retries=2")
    finally:
        holder.join()
    assert not _key_column_exists(dsn)
    with psycopg.connect(dsn) as conn:
        assert migrate.current_revision(conn) == "instrument_registry"


def test_backoff_is_jittered_and_capped() -> None:
    assert 0.125 <= migrate.backoff_seconds(1) <= 0.25
    assert migrate.backoff_seconds(10) <= 8.0


def test_cli_directory_skips_what_it_cannot_lint_and_says_so(cli: Callable[..., Result]) -> None:
    result = cli("lint", "--json", str(ROOT / "sql" / "templates"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # included by key_columns_table, or rendered by downgrades only
    assert "sql/templates/key_sync_trigger.sql.j2: no upgrade renders it on its own" in data["skipped"]
    assert data["scripts"] + len(data["skipped"]) == len(list((ROOT / "sql" / "templates").glob("*.sql.j2")))


def test_cli_named_included_template_is_exit_2(cli: Callable[..., Result]) -> None:
    result = cli("lint", str(ROOT / "sql" / "templates" / "key_sync_trigger.sql.j2"))
    assert result.exit_code == 2
    assert "no upgrade renders it on its own" in result.output
