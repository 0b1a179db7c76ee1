"""Templates: quoting filters, strict parameters, pglast validation with lines."""

from __future__ import annotations

from pathlib import Path

import pglast
import pytest
from pglast import ast

from toolkit import render
from toolkit.errors import KeyshiftError

HOSTILE = ['"; drop table x; --', 'we"ird', "Mixed Case", "x'y", "sélect", "a\\b"]


@pytest.fixture
def tpl_dir(tmp_path: Path) -> Path:
    (tmp_path / "make_table.sql.j2").write_text(
        "CREATE TABLE {{ schema | qi }}.{{ table | qi }}\n"
        "  ({{ column | qi }} text DEFAULT {{ default | ql }});\n"
        "COMMENT ON TABLE {{ schema | qi }}.{{ table | qi }} IS {{ default | ql }};\n"
    )
    (tmp_path / "broken.sql.j2").write_text(
        "SELECT 1;\nCREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  RETURN 1 +;\nEND $$;\n"
    )
    (tmp_path / "bad_sql.sql.j2").write_text("SELECT 1;\nSELECT FROM WHERE {{ x }};\n")
    return tmp_path


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_identifier_is_quoted_into_one_harmless_name(tpl_dir: Path, name: str) -> None:
    text = render.render("make_table", directory=tpl_dir, schema=name, table=name, column=name, default=name)
    stmts = pglast.parse_sql(text)
    assert len(stmts) == 2  # no statement smuggled in
    create = stmts[0].stmt
    assert isinstance(create, ast.CreateStmt)
    assert create.relation.schemaname == name and create.relation.relname == name
    assert create.tableElts[0].colname == name
    default = create.tableElts[0].constraints[0].raw_expr
    assert default.val.sval == name  # the literal survives exactly


@pytest.mark.parametrize("bad", ["", "x\x00y", "a" * 64, None, 5])
def test_unquotable_identifiers_are_refused(bad: object) -> None:
    with pytest.raises(KeyshiftError, match="identifier"):
        render.qi(bad)  # type: ignore[arg-type]


def test_literal_filter_types() -> None:
    assert render.ql(None) == "NULL"
    assert render.ql(True) == "true"
    assert render.ql(3) == "3"
    assert render.ql("it's") == "'it''s'"
    assert render.ql(["a", "b"]) == "ARRAY['a', 'b']"
    with pytest.raises(KeyshiftError):
        render.ql("nul\x00")


def test_missing_parameter_names_the_template(tpl_dir: Path) -> None:
    with pytest.raises(KeyshiftError, match="make_table.sql.j2: 'table' is undefined"):
        render.render("make_table", directory=tpl_dir, schema="s", column="c", default="d")


def test_plpgsql_body_error_names_template_and_line(tpl_dir: Path) -> None:
    with pytest.raises(KeyshiftError, match=r"broken.sql.j2 \(rendered\):2: in the plpgsql body of f"):
        render.render("broken", directory=tpl_dir)


def test_sql_error_names_template_and_line(tpl_dir: Path) -> None:
    with pytest.raises(KeyshiftError, match=r"bad_sql.sql.j2 \(rendered\):2: syntax error"):
        render.render("bad_sql", directory=tpl_dir, x="1")


def test_unknown_template_lists_the_known_ones(tpl_dir: Path) -> None:
    with pytest.raises(KeyshiftError, match="no template nope.sql.j2; known templates: bad_sql"):
        render.render("nope", directory=tpl_dir)
