"""keyshift audit tokens: uses of instrument_token in files and in a database at head."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from click.testing import Result

from toolkit import audit

ROOT = Path(__file__).resolve().parent.parent

SQL = """\
-- instrument_token in a comment is not a use
SELECT b.close, 'instrument_token' AS label
  FROM market.data_bars b
  JOIN market.subscriptions s ON s.instrument_token = b.instrument_token
 WHERE b.instrument_token = 42
 GROUP BY b.instrument_token, b.close;
CREATE TABLE t (instrument_token bigint, PRIMARY KEY (instrument_token));
ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (instrument_token) REFERENCES u (instrument_token);
CREATE UNIQUE INDEX t_tok ON t (instrument_token);
CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.instrument_token IS NULL THEN
    RAISE EXCEPTION 'instrument_token missing';
  END IF;
  UPDATE x SET n = 1 WHERE x.instrument_token = NEW.instrument_token;
  RETURN NEW;
END $$;
"""


def _uses(usages: list[audit.Usage]) -> list[tuple[int | None, str]]:
    return sorted((u.line, u.context) for u in usages)


def test_uses_in_sql_with_clause_and_line() -> None:
    found = audit.usages_in_sql(SQL, "x.sql")
    assert _uses(found) == [
        (4, "JOIN"),
        (4, "JOIN"),
        (5, "WHERE"),
        (6, "GROUP BY"),
        (7, "COLUMN definition"),
        (7, "PRIMARY KEY"),
        (8, "FOREIGN KEY"),
        (8, "FOREIGN KEY (referenced)"),
        (9, "INDEX"),
        (12, "plpgsql expression"),
        (15, "WHERE"),
        (15, "WHERE"),
    ]
    assert all(u.where == "x.sql" and u.source == "file" for u in found)


def test_a_clean_script_has_no_uses() -> None:
    assert audit.usages_in_sql("SELECT instrument_key FROM market.data_bars WHERE close > 0;", "ok.sql") == []


def test_sql_strings_in_python(tmp_path: Path) -> None:
    path = tmp_path / "reader.py"
    path.write_text(
        "MESSAGE = 'instrument_token is deprecated'\n"  # not SQL
        "QUERY = (\n"
        "    'SELECT close FROM market.data_bars\\n'\n"
        "    'WHERE instrument_token = 1'\n"
        ")\n"
    )
    found = audit.usages_in_python(path, "reader.py")
    assert [(u.line, u.context) for u in found] == [(4, "WHERE")]


def test_cli_files_exit_1_and_json(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "x.sql"
    path.write_text(SQL)
    result = cli("audit", "tokens", "--json", str(path))
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["usages"] == 12
    assert {r["context"] for r in data["results"]} >= {
        "WHERE",
        "JOIN",
        "GROUP BY",
        "PRIMARY KEY",
        "FOREIGN KEY",
    }


def test_cli_clean_file_exit_0(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "ok.sql"
    path.write_text("SELECT instrument_key FROM market.data_bars;\n")
    result = cli("audit", "tokens", str(path))
    assert result.exit_code == 0, result.output
    assert "0 uses of instrument_token" in result.output


def test_cli_bad_input_is_one_line_exit_2(cli: Callable[..., Result], tmp_path: Path) -> None:
    missing = cli("audit", "tokens", str(tmp_path / "nope.sql"))
    assert missing.exit_code == 2 and "no such file or directory" in missing.output
    broken = tmp_path / "broken.sql"
    broken.write_text("SELECT 1;\nSELECT FROM WHERE instrument_token;\n")
    result = cli("audit", "tokens", str(broken))
    assert result.exit_code == 2
    assert "broken.sql:2" in result.output and "Traceback" not in result.output


def test_template_as_the_revisions_render_it(cli: Callable[..., Result]) -> None:
    result = cli("audit", "tokens", "--json", str(ROOT / "sql" / "templates" / "key_columns_table.sql.j2"))
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["usages"] > 0
    assert all(r["where"] == "sql/templates/key_columns_table.sql.j2 (rendered)" for r in data["results"])
    assert "WHERE" in {r["context"] for r in data["results"]}


def test_an_included_template_is_named_as_such(cli: Callable[..., Result]) -> None:
    result = cli("audit", "tokens", str(ROOT / "sql" / "templates" / "key_sync_trigger.sql.j2"))
    assert result.exit_code == 2
    assert "no upgrade renders it on its own" in result.output


# ---------------------------------------------------------------- the database (real Postgres at head)


def _by(usages: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    return [u for u in usages if u["source"] == source]


def test_head_database(cli: Callable[..., Result], head_dsn: str) -> None:
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        conn.execute(
            'CREATE SCHEMA "Mixed Case";'
            'CREATE VIEW "Mixed Case".token_bars AS'
            " SELECT close FROM market.data_bars WHERE instrument_token = 7;"
            "CREATE FUNCTION public.old_reader(t bigint) RETURNS numeric LANGUAGE sql"
            " AS $$ SELECT max(close) FROM market.data_bars b GROUP BY b.instrument_token $$;"
            "CREATE VIEW public.key_bars AS SELECT close FROM market.data_bars WHERE instrument_key = 'X';"
        )
    result = cli("audit", "tokens", "--json", dsn=head_dsn)
    assert result.exit_code == 1, result.output
    usages = json.loads(result.output)["results"]
    columns = {(u["where"], u["context"]) for u in _by(usages, "column")}
    assert ("market.data_bars.instrument_token", "COLUMN") in columns
    assert ("market.data_bars.instrument_token", "INDEX") in columns  # the token identity kept at head
    assert ("screener.index_memberships.instrument_token", "PRIMARY KEY") in columns
    views = {(u["where"], u["context"]) for u in _by(usages, "view")}
    assert ('"Mixed Case".token_bars', "WHERE") in views
    assert not any(u["where"] == "public.key_bars" for u in usages)
    functions = {(u["where"], u["context"]) for u in _by(usages, "function")}
    assert ("old_reader(bigint)", "GROUP BY") in functions
    # the key sync trigger functions still read the token (the dual phase needs it)
    assert any(u["where"].startswith("keyshift.key_sync__market__data_bars") for u in _by(usages, "function"))
    assert all(u["context"] != "not parsed" for u in usages)


def test_database_without_token_columns_is_clean(cli: Callable[..., Result], empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bars (instrument_key text PRIMARY KEY, close numeric)")
    result = cli("audit", "tokens", dsn=empty_dsn)
    assert result.exit_code == 0, result.output
    assert "0 uses of instrument_token" in result.output
