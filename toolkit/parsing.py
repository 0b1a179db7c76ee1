"""SQL and plpgsql parsed with pglast: statements with their lines, and validation.

Everything that needs to understand SQL (validation before execution, the
linter, the token-usage audit) starts here; nothing recognises SQL with
regular expressions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pglast
from pglast import ast
from pglast.parser import ParseError
from pglast.stream import RawStream

from toolkit.errors import KeyshiftError


@dataclass(frozen=True)
class Statement:
    """One top-level statement of a script."""

    text: str
    line: int  # 1-based line of the statement's first character in the script
    node: Any = field(repr=False)  # the pglast AST node (ast.Node subclass)


@dataclass(frozen=True)
class PlpgsqlStatement:
    """A SQL statement inside a plpgsql body (function or DO block)."""

    text: str
    line: int  # 1-based line in the script
    owner: str  # which function or DO block it belongs to


class SqlSyntaxError(KeyshiftError):
    """SQL that does not parse; the message names the origin and the line."""


def line_of(text: str, offset: int) -> int:
    """1-based line number of a character offset."""
    return text.count("\n", 0, max(offset, 0)) + 1


def statements(sql: str, origin: str = "<sql>") -> list[Statement]:
    """Split a script into parsed statements; a syntax error names origin and line."""
    try:
        raw = pglast.parse_sql(sql)
    except ParseError as exc:
        message, location = exc.args[0], exc.args[1] if len(exc.args) > 1 else None
        where = f"{origin}:{line_of(sql, location)}" if location is not None else origin
        raise SqlSyntaxError(f"{where}: {message}") from None
    out = []
    for raw_stmt in raw:
        start = raw_stmt.stmt_location or 0
        length = raw_stmt.stmt_len or (len(sql) - start)
        chunk = sql[start : start + length]
        # stmt_location points at the end of the previous statement's ';', so
        # leading comments and blank lines belong to the chunk: skip them.
        skipped = len(chunk) - len(chunk.lstrip())
        out.append(Statement(chunk.strip(), line_of(sql, start + skipped), raw_stmt.stmt))
    return out


def _is_plpgsql(stmt: Statement) -> bool:
    node = stmt.node
    if isinstance(node, ast.DoStmt):
        langs = [a.arg.sval for a in node.args or () if a.defname == "language"]
        return not langs or langs[0].lower() == "plpgsql"
    if isinstance(node, ast.CreateFunctionStmt):
        for opt in node.options or ():
            if opt.defname == "language":
                return str(opt.arg.sval).lower() == "plpgsql"
    return False


def function_name(stmt: Statement) -> str:
    node = stmt.node
    if isinstance(node, ast.CreateFunctionStmt):
        return ".".join(n.sval for n in node.funcname or ())
    return "DO block"


_NAMESPACE_LIMIT = "LookupExplicitNamespace"


def _unqualified_signature(text: str) -> str:
    """The CREATE FUNCTION with schema-qualified argument and return types unqualified.

    libpg_query's plpgsql parser resolves qualified type names only in
    pg_catalog and public ("LookupExplicitNamespace only supports ..."), so
    ``RETURNS keyshift.settings`` cannot be parsed as written. The types do not
    matter to the body's syntax; the schema is dropped for the parse only.
    Inside a body, declare such variables as ``schema.table%ROWTYPE`` or record.
    """
    node: Any = pglast.parse_sql(text)[0].stmt
    types = [node.returnType] + [p.argType for p in node.parameters or ()]
    for type_name in types:
        if type_name is not None and type_name.names and len(type_name.names) > 1:
            type_name.names = type_name.names[-1:]
    return str(RawStream()(node))


def parse_plpgsql(stmt: Statement, origin: str = "<sql>") -> list[dict[str, Any]]:
    """The plpgsql parse tree of a CREATE FUNCTION ... plpgsql or DO statement."""
    text = stmt.text
    if isinstance(stmt.node, ast.CreateFunctionStmt):
        try:
            pglast.parse_plpgsql(text)
        except ParseError as exc:
            if _NAMESPACE_LIMIT in str(exc.args[0]):
                text = _unqualified_signature(text)
    try:
        result: list[dict[str, Any]] = pglast.parse_plpgsql(text)
    except ParseError as exc:
        raise SqlSyntaxError(
            f"{origin}:{stmt.line}: in the plpgsql body of {function_name(stmt)}: {exc.args[0]}"
        ) from None
    return result


def _walk_json(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_json(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_json(item)


def _body_first_line(stmt: Statement) -> int:
    """Line (in the script) where the plpgsql body's text starts."""
    node = stmt.node
    body_sval = None
    if isinstance(node, ast.DoStmt):
        body_sval = next((a.arg.sval for a in node.args or () if a.defname == "as"), None)
    elif isinstance(node, ast.CreateFunctionStmt):
        for opt in node.options or ():
            if opt.defname == "as":
                body_sval = opt.arg[0].sval if isinstance(opt.arg, tuple) else opt.arg.sval
    if body_sval:
        index = stmt.text.find(body_sval)
        if index >= 0:
            return stmt.line + stmt.text.count("\n", 0, index)
    return stmt.line


def plpgsql_statements(stmt: Statement, origin: str = "<sql>") -> list[PlpgsqlStatement]:
    """The SQL statements embedded in a plpgsql body, with their script lines.

    Static SQL (PLpgSQL_stmt_execsql) and the query texts of expressions are
    returned; dynamic SQL built at run time (EXECUTE format(...)) cannot be
    seen by any parser and is not.
    """
    if not _is_plpgsql(stmt):
        return []
    tree = parse_plpgsql(stmt, origin)
    first = _body_first_line(stmt)
    owner = function_name(stmt)
    found = []
    for node in _walk_json(tree):
        execsql = node.get("PLpgSQL_stmt_execsql")
        if execsql is None:
            continue
        query = execsql.get("sqlstmt", {}).get("PLpgSQL_expr", {}).get("query")
        if query:
            # plpgsql line numbers count from the body's first line (1).
            line = first + int(execsql.get("lineno", 1)) - 1
            found.append(PlpgsqlStatement(query, line, owner))
    return found


def needs_autocommit(stmt: Statement) -> bool:
    """CREATE/DROP INDEX CONCURRENTLY and REINDEX CONCURRENTLY refuse to run in a transaction."""
    node = stmt.node
    if isinstance(node, (ast.IndexStmt, ast.DropStmt)):
        return bool(node.concurrent)
    if isinstance(node, ast.ReindexStmt):
        return any(p.defname == "concurrently" for p in node.params or ())
    return False


def validate(sql: str, origin: str = "<sql>") -> list[Statement]:
    """Parse a script and every plpgsql body in it; raise SqlSyntaxError naming the line."""
    parsed = statements(sql, origin)
    for stmt in parsed:
        if _is_plpgsql(stmt):
            parse_plpgsql(stmt, origin)
    return parsed
