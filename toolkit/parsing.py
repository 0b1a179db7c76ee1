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
from pglast import ast, enums
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
    kind: str = "statement"  # or "expression": a condition or assignment, as SELECT expr


class SqlSyntaxError(KeyshiftError):
    """SQL that does not parse; the message names the origin and the line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line  # 1-based line in the script, when known


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
        line = line_of(sql, location) if location is not None else None
        raise SqlSyntaxError(f"{where}: {message}", line) from None
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
            f"{origin}:{stmt.line}: in the plpgsql body of {function_name(stmt)}: {exc.args[0]}",
            stmt.line,
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


def plpgsql_statements(
    stmt: Statement, origin: str = "<sql>", *, include_perform: bool = False
) -> list[PlpgsqlStatement]:
    """The SQL statements embedded in a plpgsql body, with their script lines.

    Static SQL (PLpgSQL_stmt_execsql), and with ``include_perform`` the
    ``PERFORM`` statements (as the SELECT they run), are returned; dynamic SQL
    built at run time (EXECUTE format(...)) cannot be seen by any parser and
    is not.
    """
    if not _is_plpgsql(stmt):
        return []
    tree = parse_plpgsql(stmt, origin)
    first = _body_first_line(stmt)
    owner = function_name(stmt)
    found = []
    for node in _walk_json(tree):
        execsql = node.get("PLpgSQL_stmt_execsql")
        if execsql is None and include_perform:
            perform = node.get("PLpgSQL_stmt_perform")
            if perform is not None:
                execsql = {"lineno": perform.get("lineno", 1), "sqlstmt": perform.get("expr", {})}
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


# ---------------------------------------------------------------- walking, comments, locks
# Shared by the linter (toolkit/lint.py) and the token-usage audit (toolkit/audit.py).


def walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[Any, tuple[str, ...]]]:
    """Every pglast AST node under ``node`` with the field names leading to it."""
    if isinstance(node, ast.Node):
        yield node, path
        for name in getattr(type(node), "__slots__", ()):
            child = getattr(node, name, None)
            if isinstance(child, (ast.Node, list, tuple)):
                yield from walk(child, path + (name,))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from walk(item, path)


def relation_name(rel: Any) -> str:
    """schema.table (or table) of a RangeVar, as the parser folded it."""
    return f"{rel.schemaname}.{rel.relname}" if rel.schemaname else str(rel.relname)


@dataclass(frozen=True)
class Comment:
    """A comment in a script, plpgsql bodies included."""

    text: str  # without the -- or /* */ markers, stripped
    line: int  # 1-based line of the comment in the script
    next_code_line: int | None  # line of the first token after it that is not a comment


_COMMENT_TOKENS = ("SQL_COMMENT", "C_COMMENT")


def comments(sql: str, first_line: int = 1) -> list[Comment]:
    """The comments of a script, with those inside dollar-quoted bodies, by the scanner."""
    try:
        tokens = pglast.parser.scan(sql)
    except ParseError:
        return []
    found = []
    for index, token in enumerate(tokens):
        text = sql[token.start : token.end + 1]
        if token.name in _COMMENT_TOKENS:
            body = text[2:-2] if token.name == "C_COMMENT" else text[2:]
            after = next((t for t in tokens[index + 1 :] if t.name not in _COMMENT_TOKENS), None)
            following = None if after is None else first_line + line_of(sql, after.start) - 1
            found.append(Comment(body.strip(), first_line + line_of(sql, token.start) - 1, following))
        elif token.name == "SCONST" and text.startswith("$"):
            tag = text[: text.index("$", 1) + 1]
            inner = text[len(tag) : len(text) - len(tag)]
            inner_line = first_line + line_of(sql, token.start + len(tag)) - 1
            found.extend(comments(inner, inner_line))
    return found


def code_line(text: str, line: int) -> int:
    """Line of the first token of ``text`` that is not a comment (``text`` starts at ``line``)."""
    try:
        tokens = pglast.parser.scan(text)
    except ParseError:
        return line
    first = next((t for t in tokens if t.name not in _COMMENT_TOKENS), None)
    return line if first is None else line + text.count("\n", 0, first.start)


# Table lock modes, weakest first (PostgreSQL 15, "Explicit Locking").
LOCK_MODES = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)


@dataclass(frozen=True)
class TableLock:
    """A table lock a DDL statement takes, by the documentation of PostgreSQL 15."""

    table: str  # schema.table or table, as written
    mode: str  # one of LOCK_MODES
    what: str  # the clause that takes it


_AT = enums.AlterTableType
_SHARE_UPDATE_EXCLUSIVE_CMDS = {
    _AT.AT_ValidateConstraint,
    _AT.AT_SetStatistics,
    _AT.AT_SetOptions,
    _AT.AT_ResetOptions,
    _AT.AT_ClusterOn,
    _AT.AT_DropCluster,
    _AT.AT_AttachPartition,
}
# CREATE TRIGGER and ENABLE/DISABLE TRIGGER take SHARE ROW EXCLUSIVE on PostgreSQL 15.
_TRIGGER_CMDS = {
    _AT.AT_EnableTrig,
    _AT.AT_EnableAlwaysTrig,
    _AT.AT_EnableReplicaTrig,
    _AT.AT_DisableTrig,
    _AT.AT_EnableTrigAll,
    _AT.AT_DisableTrigAll,
    _AT.AT_EnableTrigUser,
    _AT.AT_DisableTrigUser,
}


def _alter_table_locks(node: Any) -> list[TableLock]:
    table = relation_name(node.relation)
    locks = []
    for cmd in node.cmds or ():
        what = _AT(cmd.subtype).name.removeprefix("AT_")
        if cmd.subtype in _SHARE_UPDATE_EXCLUSIVE_CMDS:
            locks.append(TableLock(table, "SHARE UPDATE EXCLUSIVE", what))
        elif cmd.subtype in _TRIGGER_CMDS:
            locks.append(TableLock(table, "SHARE ROW EXCLUSIVE", what))
        elif (
            cmd.subtype == _AT.AT_AddConstraint
            and isinstance(cmd.def_, ast.Constraint)
            and cmd.def_.contype == enums.ConstrType.CONSTR_FOREIGN
        ):
            locks.append(TableLock(table, "SHARE ROW EXCLUSIVE", "AddForeignKey"))
            locks.append(TableLock(relation_name(cmd.def_.pktable), "SHARE ROW EXCLUSIVE", "referenced"))
        else:
            locks.append(TableLock(table, "ACCESS EXCLUSIVE", what))
    return locks


def _drop_locks(node: Any) -> list[TableLock]:
    kind = enums.ObjectType
    if node.removeType == kind.OBJECT_TABLE:
        names = [".".join(s.sval for s in obj) for obj in node.objects or ()]
        return [TableLock(n, "ACCESS EXCLUSIVE", "DropTable") for n in names]
    if node.removeType == kind.OBJECT_TRIGGER:
        # objects: ((schema,) table, trigger); DROP TRIGGER takes ACCESS EXCLUSIVE.
        names = [".".join(s.sval for s in obj[:-1]) for obj in node.objects or ()]
        return [TableLock(n, "ACCESS EXCLUSIVE", "DropTrigger") for n in names]
    return []


def table_locks(node: Any) -> list[TableLock]:
    """The table locks a DDL statement takes on tables it names (DML is not DDL: none).

    A model of the PostgreSQL 15 documentation, for the linter: CREATE INDEX
    takes SHARE (CONCURRENTLY: SHARE UPDATE EXCLUSIVE), a foreign key SHARE ROW
    EXCLUSIVE on both tables, trigger DDL SHARE ROW EXCLUSIVE except DROP
    TRIGGER (ACCESS EXCLUSIVE), VALIDATE CONSTRAINT SHARE UPDATE EXCLUSIVE and
    most other ALTER TABLE forms ACCESS EXCLUSIVE.
    """
    if isinstance(node, ast.IndexStmt):
        mode = "SHARE UPDATE EXCLUSIVE" if node.concurrent else "SHARE"
        return [TableLock(relation_name(node.relation), mode, "CreateIndex")]
    if isinstance(node, ast.AlterTableStmt) and node.objtype == enums.ObjectType.OBJECT_TABLE:
        return _alter_table_locks(node)
    if isinstance(node, ast.CreateTrigStmt):
        return [TableLock(relation_name(node.relation), "SHARE ROW EXCLUSIVE", "CreateTrigger")]
    if isinstance(node, ast.DropStmt):
        return _drop_locks(node)
    if isinstance(node, ast.RenameStmt) and node.relation is not None:
        if node.renameType in (enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_COLUMN):
            return [TableLock(relation_name(node.relation), "ACCESS EXCLUSIVE", "Rename")]
    if isinstance(node, ast.TruncateStmt):
        return [TableLock(relation_name(r), "ACCESS EXCLUSIVE", "Truncate") for r in node.relations or ()]
    if isinstance(node, ast.CreateStmt):
        return [
            TableLock(relation_name(c.pktable), "SHARE ROW EXCLUSIVE", "referenced")
            for c, _ in walk(node.tableElts)
            if isinstance(c, ast.Constraint) and c.contype == enums.ConstrType.CONSTR_FOREIGN
        ]
    if isinstance(node, ast.LockStmt):
        mode = LOCK_MODES[max(0, int(node.mode or 1) - 1)]
        return [TableLock(relation_name(r), mode, "Lock") for r in node.relations or ()]
    return []


# plpgsql expression parse modes (libpg_query's RawParseMode): 0 a statement,
# 2 an expression, 3-5 an assignment "target := expression".
_PARSE_STATEMENT = 0
_ASSIGNMENTS = (3, 4, 5)


def plpgsql_expressions(stmt: Statement, origin: str = "<sql>") -> list[PlpgsqlStatement]:
    """Every SQL text of a plpgsql body as a parseable statement, with its script line.

    Statements as they are; conditions and other expressions as ``SELECT expr``;
    an assignment (which the plpgsql parser has already split from the rest)
    as ``SELECT target`` and ``SELECT expression``. Dynamic SQL (EXECUTE of a
    built string) cannot be seen.
    """
    if not _is_plpgsql(stmt):
        return []
    tree = parse_plpgsql(stmt, origin)
    first = _body_first_line(stmt)
    owner = function_name(stmt)
    found: list[PlpgsqlStatement] = []

    def visit(node: Any, lineno: int) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item, lineno)
            return
        if not isinstance(node, dict):
            return
        lineno = int(node.get("lineno", lineno))
        expr = node.get("PLpgSQL_expr")
        if isinstance(expr, dict) and expr.get("query"):
            query, mode = str(expr["query"]), int(expr.get("parseMode", _PARSE_STATEMENT))
            line = first + lineno - 1
            if mode == _PARSE_STATEMENT:
                found.append(PlpgsqlStatement(query, line, owner))
                return
            if mode in _ASSIGNMENTS:
                target, _, value = query.partition(":=")
                texts = [f"SELECT {target}", f"SELECT {value}"]
            else:
                texts = [f"SELECT {query}"]
            found.extend(PlpgsqlStatement(text, line, owner, "expression") for text in texts)
            return
        for value in node.values():
            visit(value, lineno)

    visit(tree, 1)
    return found


def sql_function_body(stmt: Statement) -> tuple[str, int] | None:
    """The body of a LANGUAGE sql function given as a string, and its first line in the script.

    (A BEGIN ATOMIC body is parsed with the CREATE FUNCTION itself.)
    """
    node = stmt.node
    if not isinstance(node, ast.CreateFunctionStmt):
        return None
    language = next((str(o.arg.sval).lower() for o in node.options or () if o.defname == "language"), None)
    body = next((o.arg for o in node.options or () if o.defname == "as"), None)
    if language != "sql" or body is None:
        return None
    text = body[0].sval if isinstance(body, tuple) else body.sval
    return str(text), _body_first_line(stmt)


def excerpt(text: str, limit: int = 90) -> str:
    """A statement on one line, comments before it left out, shortened to ``limit``."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    flat = " ".join(" ".join(lines).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
