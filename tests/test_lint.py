"""keyshift lint: rule cases as data (tests/lint_cases/*.yaml), the shipped chain, the command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result

from toolkit import lint
from toolkit.lint_rules import all_rules

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


def test_every_rule_has_a_failing_and_a_passing_case() -> None:
    failing = {rule for _, c in CASES for rule in c["expect"]}
    passing_files = {
        Path(p).stem
        for p in CASES_DIR.glob("*.yaml")
        if any(not c["expect"] for c in yaml.safe_load(Path(p).read_text())["cases"])
    }
    for rule in all_rules():
        assert rule.id in failing, f"no case where {rule.id} fires"
        if rule.check is not None and rule.id not in (
            "syntax_error",
            "plpgsql_syntax",
            "silence_without_reason",
        ):
            assert rule.id in passing_files, f"no passing case in lint_cases/{rule.id}.yaml"
        assert rule.message and rule.hint and rule.severity in ("error", "warning")


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
    assert report.scripts == len(lint.chain()) >= 6
    assert not report.failed, [f.as_dict() for f in report.findings if not f.silenced]
    for finding in report.findings:  # whatever is silenced says why
        assert finding.silenced and finding.silenced.strip()


def test_each_revision_renders_offline_sql_with_its_sources() -> None:
    rendered = lint.revision_sql("key_columns")
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
    assert json.loads(result.output)["scripts"] == len(lint.chain())


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
