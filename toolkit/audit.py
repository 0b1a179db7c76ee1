"""keyshift audit tokens: where code and the database still use instrument_token.

Files: SQL files, the templates as the revisions render them, and SQL
strings in Python files (string constants that parse as SQL). The database:
columns and the keys and indexes over them, functions and procedures
(``pg_get_functiondef``, plpgsql bodies parsed with ``pglast.parse_plpgsql``),
views and materialized views (``pg_get_viewdef``), trigger definitions, and
the statements pg_stat_statements has seen, when the extension is there.
Everything is parsed with pglast (toolkit/parsing.py); a use is an
identifier, never a match in a comment or a string. Dynamic SQL built at run
time (EXECUTE format(...)) cannot be seen.
"""

from __future__ import annotations

import ast as pyast
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pglast import ast, enums

from toolkit.errors import UsageError
from toolkit.parsing import (
    SqlSyntaxError,
    Statement,
    code_line,
    excerpt,
    line_of,
    plpgsql_expressions,
    sql_function_body,
    statements,
    walk,
)

TOKEN = "instrument_token"

# The clause a use sits in, from the innermost AST field on its path.
_CLAUSES = {
    "whereClause": "WHERE",
    "quals": "JOIN",
    "usingClause": "JOIN USING",
    "groupClause": "GROUP BY",
    "havingClause": "HAVING",
    "sortClause": "ORDER BY",
    "distinctClause": "DISTINCT",
    "partitionClause": "PARTITION BY",
    "returningList": "RETURNING",
    "cols": "INSERT column",
    "indexParams": "INDEX",
    "fk_attrs": "FOREIGN KEY",
    "pk_attrs": "FOREIGN KEY (referenced)",
    "onConflictClause": "ON CONFLICT",
    "whenClause": "TRIGGER WHEN",
    "columns": "TRIGGER UPDATE OF",
    "targetList": "SELECT list",
}
_KEYS = {enums.ConstrType.CONSTR_PRIMARY: "PRIMARY KEY", enums.ConstrType.CONSTR_UNIQUE: "UNIQUE"}


@dataclass(frozen=True)
class Usage:
    """One place that uses the identifier."""

    source: str  # file | column | function | view | trigger | pg_stat_statements
    where: str  # the file, or the database object
    line: int | None
    context: str  # the clause: WHERE, JOIN, GROUP BY, PRIMARY KEY, FOREIGN KEY ...
    statement: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Lists of bare column names (String nodes): key columns, USING (...), UPDATE OF.
_NAME_LISTS = {"keys", "including", "fk_attrs", "pk_attrs", "columns", "usingClause", "name"}


def _named(node: Any, path: tuple[str, ...], identifier: str) -> bool:
    """Does this node name the identifier (a column reference, a key column, a column definition)?"""
    if isinstance(node, ast.ColumnRef):
        last = node.fields[-1] if node.fields else None
        return isinstance(last, ast.String) and last.sval == identifier
    if isinstance(node, ast.String):  # a literal's String is under A_Const.val: not a name
        return bool(path) and path[-1] in _NAME_LISTS and node.sval == identifier
    if isinstance(node, (ast.IndexElem, ast.ResTarget)):
        return node.name == identifier
    if isinstance(node, ast.ColumnDef):
        return node.colname == identifier
    if isinstance(node, ast.AlterTableCmd):
        return node.name == identifier
    return False


def _context(node: Any, path: tuple[str, ...], parents: list[Any]) -> str:
    if isinstance(node, ast.ColumnDef):
        return "COLUMN definition"
    if isinstance(node, ast.AlterTableCmd):
        return f"ALTER TABLE {enums.AlterTableType(int(node.subtype or 0)).name.removeprefix('AT_')}"
    constraint: Any = next((p for p in reversed(parents) if isinstance(p, ast.Constraint)), None)
    if constraint is not None and path and path[-1] in ("keys", "including"):
        return _KEYS.get(constraint.contype, str(constraint.contype))
    statement = parents[0] if parents else None
    for name in reversed(path):
        if name == "targetList" and isinstance(statement, ast.UpdateStmt):
            return "UPDATE SET"
        if name in _CLAUSES:
            return _CLAUSES[name]
    return type(statement).__name__ if statement is not None else "expression"


def _walk_with_parents(node: Any) -> Iterable[tuple[Any, tuple[str, ...], list[Any]]]:
    stack: list[Any] = []
    for child, path in walk(node):
        # walk() is depth-first: the parents are the nodes on the path so far.
        del stack[len(path) :]
        yield child, path, list(stack)
        stack.append(child)


def usages_in_node(
    node: Any,
    source: str,
    where: str,
    parsed: tuple[str, int],
    text: str,
    identifier: str = TOKEN,
    context: str | None = None,
) -> list[Usage]:
    """Uses of ``identifier`` in one parsed statement.

    ``parsed`` is the text pglast parsed and its first line: a node's location
    (a character offset in it) gives the use's own line.
    """
    source_text, first_line = parsed
    found = []
    for child, path, parents in _walk_with_parents(node):
        if not _named(child, path, identifier):
            continue
        location = getattr(child, "location", None)
        line = (
            first_line + line_of(source_text, location) - 1
            if location is not None and location >= 0
            else None
        )
        found.append(Usage(source, where, line, context or _context(child, path, parents), excerpt(text)))
    return found


def usages_in_sql(
    sql: str, where: str, source: str = "file", first_line: int = 1, identifier: str = TOKEN
) -> list[Usage]:
    """Uses in a script, plpgsql bodies and DO blocks included; a syntax error is a usage error."""
    found: list[Usage] = []
    for stmt in statements(sql, where):
        start = first_line + code_line(stmt.text, stmt.line) - 1
        uses = usages_in_node(stmt.node, source, where, (sql, first_line), stmt.text, identifier)
        # Names in key lists carry no location: they get the statement's line.
        found.extend(u if u.line else _at(u, start) for u in uses)
        found.extend(_usages_in_body(stmt, where, source, first_line, identifier))
    return found


def _at(usage: Usage, line: int) -> Usage:
    return Usage(usage.source, usage.where, line, usage.context, usage.statement)


def _usages_in_body(
    stmt: Statement, where: str, source: str, first_line: int, identifier: str
) -> list[Usage]:
    found: list[Usage] = []
    sql_body = sql_function_body(stmt)
    if sql_body is not None:
        text, line = sql_body
        found.extend(usages_in_sql(text, where, source, first_line + line - 1, identifier))
    for expr in plpgsql_expressions(stmt, where):
        try:
            inner = statements(expr.text, where)
        except SqlSyntaxError:
            continue  # plpgsql-only forms (a cursor's arguments ...)
        context = "plpgsql expression" if expr.kind == "expression" else None
        for parsed in inner:
            base = (expr.text, first_line + expr.line - 1)
            uses = usages_in_node(parsed.node, source, where, base, expr.text, identifier, context)
            found.extend(u if u.line else _at(u, base[1]) for u in uses)
    return found


def usages_in_python(path: Path, where: str, identifier: str = TOKEN) -> list[Usage]:
    """Uses in the string constants of a Python file that parse as SQL."""
    found: list[Usage] = []
    from toolkit.lint import read_text

    try:
        tree = pyast.parse(read_text(path), filename=str(path))
    except SyntaxError as exc:
        raise UsageError(f"{where}:{exc.lineno}: not valid Python ({exc.msg})") from None
    for node in pyast.walk(tree):
        if isinstance(node, pyast.Constant) and isinstance(node.value, str) and identifier in node.value:
            try:
                found.extend(usages_in_sql(node.value, where, "file", node.lineno, identifier))
            except SqlSyntaxError:
                continue  # not SQL (a message, a name), or SQL with placeholders pglast cannot read
    return found


def scan_paths(paths: Iterable[Path], identifier: str = TOKEN) -> list[Usage]:
    """Uses in SQL files, Python files and templates (as the revisions render them)."""
    from toolkit import lint, migrate

    paths = list(paths)
    found: list[Usage] = []
    templates: set[str] = set()
    for path in lint.expand_paths(paths):
        where = lint.relative_path(path)
        if path.name.endswith(".sql.j2"):
            templates.add(where)
        elif path.suffix == ".py":
            found.extend(usages_in_python(path, where, identifier))
        else:
            try:
                found.extend(usages_in_sql(lint.read_text(path), where, identifier=identifier))
            except SqlSyntaxError as exc:
                raise UsageError(f"{exc.message}; fix the SQL or leave the file out") from None
    if templates:
        renders = [migrate.revision_sql(revision) for revision in migrate.chain()]
        named = {lint.relative_path(p) for p in paths if p.is_file()}
        for file, text, _ in lint.template_renders(renders, templates, named)[0]:
            found.extend(usages_in_sql(text, file, identifier=identifier))
    return found


# ---------------------------------------------------------------- the database

_COLUMNS = (
    "SELECT pg_catalog.format('%%I.%%I.%%I', n.nspname, c.relname, a.attname), c.oid, a.attnum,"
    " pg_catalog.format_type(a.atttypid, a.atttypmod)"
    " FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE a.attname = %s AND NOT a.attisdropped AND c.relkind IN ('r', 'p')"
    " AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
)
_CONSTRAINTS = (
    "SELECT conname, contype, pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint"
    " WHERE (conrelid = %s AND %s = ANY (conkey)) OR (confrelid = %s AND %s = ANY (confkey))"
)
_INDEXES = (
    "SELECT pg_catalog.pg_get_indexdef(i.indexrelid) FROM pg_catalog.pg_index i"
    " WHERE i.indrelid = %s AND %s = ANY (i.indkey::smallint[])"
    " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid)"
)
_FUNCTIONS = (
    "SELECT p.oid::pg_catalog.regprocedure::text, pg_catalog.pg_get_functiondef(p.oid)"
    " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " JOIN pg_catalog.pg_language l ON l.oid = p.prolang"
    " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
    " AND p.prokind IN ('f', 'p') AND l.lanname IN ('plpgsql', 'sql')"
    " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d"
    "  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')"
    " AND pg_catalog.strpos(p.prosrc, %s) > 0"
)
_VIEWS = (
    "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), pg_catalog.pg_get_viewdef(c.oid)"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
)
_TRIGGERS = (
    "SELECT pg_catalog.format('%I on %s', t.tgname, t.tgrelid::pg_catalog.regclass),"
    " pg_catalog.pg_get_triggerdef(t.oid) FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal"
)
_STAT_STATEMENTS = "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'"  # noqa: E501


def scan_database(conn: Any, identifier: str = TOKEN) -> list[Usage]:
    """Uses in a live database's catalog (and pg_stat_statements, when installed)."""
    found: list[Usage] = []
    for name, relid, attnum, type_name in conn.execute(_COLUMNS, (identifier,)).fetchall():
        found.append(Usage("column", name, None, "COLUMN", type_name))
        for conname, contype, definition in conn.execute(
            _CONSTRAINTS, (relid, attnum, relid, attnum)
        ).fetchall():
            kind = {"p": "PRIMARY KEY", "u": "UNIQUE", "f": "FOREIGN KEY", "x": "EXCLUDE", "c": "CHECK"}
            found.append(Usage("column", name, None, kind.get(contype, contype), f"{conname}: {definition}"))
        for (definition,) in conn.execute(_INDEXES, (relid, attnum)).fetchall():
            found.append(Usage("column", name, None, "INDEX", excerpt(definition)))
    for signature, definition in conn.execute(_FUNCTIONS, (identifier,)).fetchall():
        found.extend(_parsed_object("function", signature, definition, identifier))
    for name, definition in conn.execute(_VIEWS).fetchall():
        found.extend(_parsed_object("view", name, definition, identifier))
    for name, definition in conn.execute(_TRIGGERS).fetchall():
        found.extend(_parsed_object("trigger", name, definition, identifier))
    found.extend(_stat_statements(conn, identifier))
    return found


def _parsed_object(source: str, name: str, definition: str, identifier: str) -> list[Usage]:
    try:
        return usages_in_sql(definition, name, source, identifier=identifier)
    except SqlSyntaxError as exc:
        # The server accepted it, so pglast's grammar lags behind: say so rather than skip it.
        return [Usage(source, name, None, "not parsed", excerpt(exc.message))]


def _stat_statements(conn: Any, identifier: str) -> list[Usage]:
    from psycopg import sql

    row = conn.execute(_STAT_STATEMENTS).fetchone()
    if row is None:
        return []
    query = sql.SQL(
        "SELECT query, calls FROM {}.pg_stat_statements WHERE pg_catalog.strpos(query, %s) > 0"
    ).format(sql.Identifier(row[0]))
    found = []
    for text, calls in conn.execute(query, (identifier,)).fetchall():
        try:
            found.extend(
                usages_in_sql(
                    text, f"statement called {calls} times", "pg_stat_statements", identifier=identifier
                )
            )
        except SqlSyntaxError:
            continue  # a truncated or utility statement text
    return found


def audit_tokens(paths: Iterable[Path] = (), dsn: str | None = None, database: bool = False) -> list[Usage]:
    """Uses of instrument_token in files (PATHS) and, with ``database``, in the database."""
    from toolkit import db

    paths = list(paths)
    found = scan_paths(paths) if paths else []
    if database or not paths:
        with db.connection(dsn) as conn:
            found.extend(scan_database(conn))
    return found
