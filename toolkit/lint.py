"""keyshift lint: unsafe DDL in SQL files, rendered templates and the revisions' offline SQL.

Every script is parsed with pglast (toolkit/parsing.py), plpgsql bodies and
DO blocks included, and each statement is checked by the rules of
``toolkit/lint_rules/`` against what the script did before it (tables it
created, lock_timeout set, CHECK constraints validated). A revision is
linted as the SQL ``alembic upgrade --sql`` writes for it, and its findings
point back at the sql/ file or template the statement came from.

A finding is silenced for one statement by a comment right above it (or on
its first line) that gives a reason::

    -- keyshift-lint: ignore=index_not_concurrent reason="created empty two lines up"
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pglast import ast, enums

from toolkit import migrate
from toolkit.errors import UsageError
from toolkit.lint_rules import Rule, ScriptState, all_rules, syntax
from toolkit.parsing import (
    SqlSyntaxError,
    Statement,
    code_line,
    comments,
    plpgsql_statements,
    relation_name,
    statements,
)
from toolkit.render import TEMPLATE_SUFFIX
from toolkit.resources import alembic_dir, sql_dir, templates_dir

SILENCE_PREFIX = "keyshift-lint:"
EXCERPT_CHARS = 90


@dataclass
class Finding:
    """One violation of one rule by one statement."""

    rule: str
    severity: str
    file: str
    line: int
    statement: str  # the statement's first line, shortened
    detail: str
    hint: str
    revision: str | None = None
    silenced: str | None = None  # the reason given, when a comment silences it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Silence:
    rules: tuple[str, ...]
    reason: str
    line: int
    next_code_line: int | None


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    scripts: int = 0

    @property
    def failed(self) -> bool:
        return any(f.silenced is None for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        open_ = [f for f in self.findings if f.silenced is None]
        return {
            "scripts": self.scripts,
            "findings": len(open_),
            "silenced": len(self.findings) - len(open_),
            "results": [f.as_dict() for f in self.findings],
        }


def _rules() -> dict[str, Rule]:
    return {rule.id: rule for rule in all_rules()}


def parse_silences(sql: str) -> tuple[list[Silence], list[int]]:
    """The silencing comments of a script, and the lines of those that give no reason.

    Syntax (a comment right above the statement, or on its first line)::

        -- keyshift-lint: ignore=RULE[,RULE] reason="why it is safe here"
    """
    found, bad = [], []
    for comment in comments(sql):
        if not comment.text.startswith(SILENCE_PREFIX):
            continue
        try:
            words = shlex.split(comment.text[len(SILENCE_PREFIX) :])
        except ValueError:  # an unbalanced quote
            bad.append(comment.line)
            continue
        options = dict(w.partition("=")[::2] for w in words)
        ids = tuple(r.strip() for r in options.get("ignore", "").split(",") if r.strip())
        reason = options.get("reason", "").strip()
        if not ids or not reason:
            bad.append(comment.line)
            continue
        found.append(Silence(ids, reason, comment.line, comment.next_code_line))
    return found, bad


def _excerpt(text: str) -> str:
    first = next(
        (ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("--")), ""
    )
    return first if len(first) <= EXCERPT_CHARS else first[: EXCERPT_CHARS - 3] + "..."


# ---------------------------------------------------------------- script state


def _setting_value(node: Any) -> str | None:
    arg = node.args[0] if node.args else None
    value = getattr(arg, "val", None)
    if value is None:
        return None
    return str(getattr(value, "sval", None) or getattr(value, "ival", 0))


def _set_lock_timeout(state: ScriptState, value: str | None, local: bool) -> None:
    on = value is not None and value.strip() not in ("0", "")
    if local:
        state.lock_timeout_local = on
    else:
        state.lock_timeout_session = on


def _set_config_calls(node: Any) -> Iterable[tuple[str, str, bool]]:
    """SELECT set_config('lock_timeout', '2s', true) (plpgsql: PERFORM set_config(...))."""
    if not isinstance(node, ast.SelectStmt):
        return
    for target in node.targetList or ():
        call: Any = target.val
        if isinstance(call, ast.FuncCall) and call.funcname and call.funcname[-1].sval == "set_config":
            args = [getattr(getattr(a, "val", None), "sval", None) for a in call.args or ()]
            local = getattr(getattr(call.args[-1], "val", None), "boolval", False) if call.args else False
            if len(args) == 3 and args[0] and args[1] is not None:
                yield args[0], args[1], bool(local)


def update_state(node: Any, state: ScriptState) -> None:
    """Record what a statement did that later rules depend on."""
    if isinstance(node, (ast.CreateStmt, ast.CreateTableAsStmt)):
        created: Any = node
        rel = created.relation if isinstance(node, ast.CreateStmt) else created.into.rel
        state.created.add(relation_name(rel))
    elif isinstance(node, ast.VariableSetStmt) and node.name == "lock_timeout":
        value = _setting_value(node) if node.kind == enums.VariableSetKind.VAR_SET_VALUE else None
        _set_lock_timeout(state, value, bool(node.is_local))
    elif isinstance(node, ast.TransactionStmt):
        kind = enums.TransactionStmtKind
        if node.kind in (kind.TRANS_STMT_BEGIN, kind.TRANS_STMT_START):
            state.in_transaction = True
        elif node.kind in (kind.TRANS_STMT_COMMIT, kind.TRANS_STMT_ROLLBACK):
            state.in_transaction = False
            state.lock_timeout_local = False
    elif isinstance(node, ast.AlterTableStmt) and node.objtype == enums.ObjectType.OBJECT_TABLE:
        _update_constraints(node, state)
    for name, value, local in _set_config_calls(node):
        if name == "lock_timeout":
            _set_lock_timeout(state, value, local)


def _not_null_column(con: Any) -> str | None:
    expr = con.raw_expr
    if (
        isinstance(expr, ast.NullTest)
        and expr.nulltesttype == enums.NullTestType.IS_NOT_NULL
        and isinstance(expr.arg, ast.ColumnRef)
    ):
        column: Any = expr.arg
        return str(column.fields[-1].sval)
    return None


def _update_constraints(node: Any, state: ScriptState) -> None:
    table = relation_name(node.relation)
    for cmd in node.cmds or ():
        con = cmd.def_
        if cmd.subtype == enums.AlterTableType.AT_AddConstraint and isinstance(con, ast.Constraint):
            column = _not_null_column(con) if con.contype == enums.ConstrType.CONSTR_CHECK else None
            if column and con.skip_validation and con.conname:
                state.pending_not_null_checks[con.conname] = (table, column)
            elif column and not con.skip_validation:
                state.proven_not_null.add((table, column))
        elif cmd.subtype == enums.AlterTableType.AT_ValidateConstraint:
            proven = state.pending_not_null_checks.get(cmd.name)
            if proven:
                state.proven_not_null.add(proven)


def _function_state(node: Any) -> ScriptState:
    """A function body runs later, with the function's own SET options."""
    state = ScriptState()
    for opt in node.options or ():
        if (
            opt.defname == "set"
            and isinstance(opt.arg, ast.VariableSetStmt)
            and opt.arg.name == "lock_timeout"
        ):
            _set_lock_timeout(state, _setting_value(opt.arg), local=True)
    return state


# ---------------------------------------------------------------- linting one script


@dataclass
class _Source:
    """Where a statement of a revision's offline SQL came from: file, line offset, its silences."""

    file: str
    delta: int
    silences: list[Silence]


class _Locator:
    """Maps statements of a revision's offline SQL back to the scripts it ran, in order.

    Comments before a statement do not reach the offline SQL, so silencing
    comments are read in the sql/ file or template the statement came from.
    """

    def __init__(self, recorded: list[tuple[str, str]]) -> None:
        self.entries: list[tuple[_Source, Statement]] = []
        self.bad_silences: list[tuple[str, int]] = []
        for origin, text in recorded:
            silences, bad = parse_silences(text)
            self.bad_silences.extend((origin_file(origin), line) for line in bad)
            try:
                for stmt in statements(text, origin):
                    self.entries.append((_Source(origin_file(origin), stmt.line, silences), stmt))
            except SqlSyntaxError:
                continue
        self.position = 0

    def find(self, stmt: Statement, line: int) -> _Source | None:
        for index in range(self.position, len(self.entries)):
            source, recorded = self.entries[index]
            if recorded.text == stmt.text:
                self.position = index + 1
                return _Source(source.file, code_line(recorded.text, recorded.line) - line, source.silences)
        return None


def origin_file(origin: str) -> str:
    """sql/templates/NAME.sql.j2 for "template NAME", the origin itself otherwise."""
    if origin.startswith("template "):
        name = origin.removeprefix("template ")
        name = name if name.endswith(TEMPLATE_SUFFIX) else name + TEMPLATE_SUFFIX
        return f"sql/templates/{name} (rendered)"
    return origin


class _ScriptLinter:
    def __init__(self, sql: str, origin: str, revision: str | None, locator: _Locator | None) -> None:
        self.sql = sql
        self.origin = origin
        self.revision = revision
        self.locator = locator
        self.rules = _rules()
        self.silences, bad = parse_silences(sql)
        self.findings: list[Finding] = []
        for line in bad:
            self.report(syntax.SILENCE_WITHOUT_REASON, line, "", "comment gives no rule or no reason", None)
        for file, line in locator.bad_silences if locator else ():
            self.report(
                syntax.SILENCE_WITHOUT_REASON,
                line,
                "",
                "comment gives no rule or no reason",
                _Source(file, 0, []),
            )

    def report(self, rule: Rule, line: int, text: str, detail: str, source: _Source | None) -> None:
        file, where = (source.file, line + source.delta) if source else (self.origin, line)
        silences = source.silences if source else self.silences
        reason = next(
            (s.reason for s in silences if rule.id in s.rules and where in (s.next_code_line, s.line)),
            None,
        )
        self.findings.append(
            Finding(
                rule.id, rule.severity, file, where, _excerpt(text), detail, rule.hint, self.revision, reason
            )
        )

    def check(self, node: Any, state: ScriptState, line: int, text: str, source: _Source | None) -> None:
        for rule in self.rules.values():
            for detail in rule.check(node, state):
                self.report(rule, line, text, detail, source)

    def run(self, state: ScriptState) -> list[Finding]:
        try:
            parsed = statements(self.sql, self.origin)
        except SqlSyntaxError as exc:
            self.report(syntax.SYNTAX_ERROR, exc.line or 1, "", exc.message, None)
            return self.findings
        for stmt in parsed:
            line = code_line(stmt.text, stmt.line)
            source = self.locator.find(stmt, line) if self.locator else None
            self.check(stmt.node, state, line, stmt.text, source)
            self.body(stmt, state, source)
            update_state(stmt.node, state)
        return self.findings

    def body(self, stmt: Statement, state: ScriptState, source: _Source | None) -> None:
        """Lint the static statements of a plpgsql function body or DO block."""
        try:
            inner = plpgsql_statements(stmt, self.origin, include_perform=True)
        except SqlSyntaxError as exc:
            detail = exc.message.split(": in the plpgsql body of ", 1)[-1]
            self.report(syntax.PLPGSQL_SYNTAX, code_line(stmt.text, stmt.line), stmt.text, detail, source)
            return
        if not inner:
            return
        # A DO block runs now, in the script's state; a function runs later, on its own.
        body_state = state if isinstance(stmt.node, ast.DoStmt) else _function_state(stmt.node)
        for embedded in inner:
            try:
                nodes = [s.node for s in statements(embedded.text, self.origin)]
            except SqlSyntaxError:
                continue  # plpgsql-only syntax in an expression: the body itself parsed
            for node in nodes:
                self.check(node, body_state, embedded.line, embedded.text, source)
                update_state(node, body_state)


def lint_sql(
    sql: str,
    origin: str = "<sql>",
    *,
    assume_lock_timeout: bool = False,
    revision: str | None = None,
    recorded: list[tuple[str, str]] | None = None,
) -> list[Finding]:
    """Lint one script. ``assume_lock_timeout``: it runs under its caller's lock_timeout."""
    state = ScriptState(lock_timeout_session=assume_lock_timeout)
    locator = _Locator(recorded) if recorded is not None else None
    return _ScriptLinter(sql, origin, revision, locator).run(state)


# ---------------------------------------------------------------- revisions, templates, files


@dataclass(frozen=True)
class RevisionSql:
    revision: str
    path: str  # the revision's file, relative to the repository
    sql: str  # what `alembic upgrade down:rev --sql` writes
    recorded: list[tuple[str, str]]  # (origin, script) of every sql file and template it ran


def revision_sql(revision: str) -> RevisionSql:
    """The offline SQL of one revision, and the scripts it rendered."""
    scripts = migrate.script()
    rev = scripts.get_revision(revision)
    if rev is None:
        raise UsageError(f"no revision {revision!r}")
    down = rev.down_revision
    target = f"{down}:{rev.revision}" if isinstance(down, str) else rev.revision
    cfg = migrate.config()
    buffer = io.StringIO()
    cfg.output_buffer = buffer
    with migrate.recording() as recorded:
        migrate.command.upgrade(cfg, target, sql=True)
    path = Path(rev.path).relative_to(alembic_dir().parent).as_posix()
    return RevisionSql(rev.revision, path, buffer.getvalue(), list(recorded))


def chain() -> list[str]:
    """The revisions from base to head."""
    return [r.revision for r in reversed(list(migrate.script().walk_revisions("base", "heads")))]


def lint_revision(rendered: RevisionSql) -> list[Finding]:
    return lint_sql(
        rendered.sql, f"{rendered.path} (offline SQL)", revision=rendered.revision, recorded=rendered.recorded
    )


def template_renders(renders: Iterable[RevisionSql], templates: set[str]) -> list[tuple[str, str, str]]:
    """(file, rendered text, revision) of each distinct render of the templates named.

    A template is known by what the revisions render with it; one that no
    revision renders on its own (only included by another) is a usage error.
    """
    found, seen = [], set()
    for rendered in renders:
        for origin, text in rendered.recorded:
            file = origin_file(origin)
            if file.split(" ")[0] in templates and (file, text) not in seen:
                seen.add((file, text))
                found.append((file, text, rendered.revision))
    missing = templates - {file.split(" ")[0] for file, _, _ in found}
    if missing:
        raise UsageError(
            f"{', '.join(sorted(missing))}: no revision renders it on its own (a template included by "
            "another is checked in the one that includes it)"
        )
    return found


def lint_template_renders(renders: Iterable[RevisionSql], templates: set[str]) -> list[Finding]:
    """Each template as the revisions render it, under their lock_timeout."""
    findings = []
    for file, text, revision in template_renders(renders, templates):
        findings.extend(lint_sql(text, file, assume_lock_timeout=True, revision=revision))
    return findings


def relative_path(path: Path) -> str:
    """A path relative to the repository (or install) root when under it, else as given."""
    root = sql_dir().parent
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files named, and the .sql, .sql.j2 and .py files under directories named."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.name.endswith((".sql", TEMPLATE_SUFFIX, ".py")))
            )
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or directory; give SQL, template or Python files")
    return files


def lint(paths: Iterable[Path] = (), *, revisions: bool = False) -> Report:
    """Lint files, templates (as the revisions render them) and revisions (offline SQL).

    With no paths, the whole revision chain is linted: its findings point at
    the sql/ files and templates each statement came from.
    """
    files = expand_paths(paths)
    revisions = revisions or not files
    report = Report()
    renders: list[RevisionSql] | None = None
    by_path = {}
    templates: set[str] = set()
    for path in files:
        rel = relative_path(path)
        if path.suffix == ".py":
            by_path[path.resolve()] = rel
        elif path.name.endswith(TEMPLATE_SUFFIX):
            if path.resolve().parent != templates_dir().resolve():
                raise UsageError(
                    f"{path}: templates are linted as the revisions render them; only sql/templates/ is known"
                )
            templates.add(rel)
        else:
            # A shipped sql/ file runs inside a revision, under its lock_timeout.
            shipped = path.resolve().parent == sql_dir().resolve()
            text = read_text(path)
            report.findings.extend(lint_sql(text, rel, assume_lock_timeout=shipped))
            report.scripts += 1
    if revisions or by_path or templates:
        renders = [revision_sql(r) for r in chain()]
    for rendered in renders or ():
        wanted = revisions or (alembic_dir().parent / rendered.path).resolve() in by_path
        if wanted:
            report.findings.extend(lint_revision(rendered))
            report.scripts += 1
    unknown = set(by_path.values()) - {r.path for r in renders or ()}
    if unknown:
        raise UsageError(f"{', '.join(sorted(unknown))}: not a revision of keyshift's chain")
    if templates:
        report.findings.extend(lint_template_renders(renders or (), templates))
        report.scripts += len(templates)
    return report


def read_text(path: Path) -> str:
    """A file's text; unreadable is a usage error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from None


# ---------------------------------------------------------------- --trace-locks


@dataclass
class RevisionTrace:
    """The table locks a revision took on tables that existed before it, and its rewrites."""

    revision: str
    budget: str | None
    locks: list[dict[str, Any]] = field(default_factory=list)  # statement line, table, mode
    unobserved: list[dict[str, Any]] = field(default_factory=list)  # outside a transaction
    rewritten: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = [f.as_dict() for f in self.findings]
        return data


_TABLES = (
    "SELECT c.oid, n.nspname || '.' || c.relname, c.relfilenode"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname NOT LIKE 'pg\\_toast%'"
)
_MY_LOCKS = (
    "SELECT relation, mode FROM pg_catalog.pg_locks"
    " WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'relation' AND granted"
)


def _mode_name(lock: str) -> str:
    """'ShareRowExclusiveLock' -> 'SHARE ROW EXCLUSIVE'."""
    from toolkit.parsing import LOCK_MODES

    for mode in LOCK_MODES:
        if mode.title().replace(" ", "") + "Lock" == lock:
            return mode
    return lock


def _budget(revision: str) -> str | None:
    module = migrate.script().get_revision(revision).module
    budget = getattr(module, "LOCK_BUDGET", None)
    return str(budget) if budget else None


def trace_revision(conn: Any, rendered: RevisionSql, budget: str | None = None) -> RevisionTrace:
    """Apply one revision's offline SQL statement by statement; watch pg_locks and relfilenode.

    Locks are read from this session's own pg_locks rows after each statement
    inside a transaction (they are held to its end); a statement run outside a
    transaction (CREATE INDEX CONCURRENTLY) has released its lock by then, so
    the lock model's expectation is reported for it, marked unobserved.
    ``budget`` defaults to the revision's LOCK_BUDGET.
    """
    from psycopg import pq

    from toolkit.parsing import LOCK_MODES, needs_autocommit, table_locks

    trace = RevisionTrace(rendered.revision, budget or _budget(rendered.revision))
    before = {oid: (name, node) for oid, name, node in conn.execute(_TABLES).fetchall()}
    existing = {name for name, _ in before.values()}
    held: set[tuple[int, str]] = set()
    for stmt in statements(rendered.sql, rendered.path):
        conn.execute(stmt.text)
        line = code_line(stmt.text, stmt.line)
        if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
            held = set()
            if needs_autocommit(stmt):
                for expected in table_locks(stmt.node):
                    # An unqualified name is taken as the one existing table of that name.
                    named = [n for n in existing if expected.table in (n, n.split(".", 1)[1])]
                    if len(named) == 1:
                        trace.unobserved.append(
                            {
                                "line": line,
                                "table": named[0],
                                "mode": expected.mode,
                                "statement": _excerpt(stmt.text),
                            }
                        )
            continue
        now = {
            (int(rel), _mode_name(mode))
            for rel, mode in conn.execute(_MY_LOCKS).fetchall()
            if rel is not None
        }
        strongest: dict[int, str] = {}
        for rel, mode in now - held:
            if rel in before and LOCK_MODES.index(mode) >= LOCK_MODES.index(strongest.get(rel, mode)):
                strongest[rel] = mode
        for rel, mode in sorted(strongest.items(), key=lambda item: before[item[0]][0]):
            trace.locks.append(
                {"line": line, "table": before[rel][0], "mode": mode, "statement": _excerpt(stmt.text)}
            )
        held = now
    after = {oid: node for oid, _, node in conn.execute(_TABLES).fetchall()}
    trace.rewritten = sorted(
        name for oid, (name, node) in before.items() if oid in after and after[oid] != node
    )
    if trace.budget:
        limit = LOCK_MODES.index(trace.budget)
        rule = _rules()["lock_budget"]
        for lock in trace.locks + trace.unobserved:
            if LOCK_MODES.index(lock["mode"]) > limit:
                detail = f"{lock['mode']} on {lock['table']} exceeds LOCK_BUDGET {trace.budget}"
                trace.findings.append(
                    Finding(
                        rule.id,
                        rule.severity,
                        rendered.path,
                        lock["line"],
                        lock.get("statement", ""),
                        detail,
                        rule.hint,
                        rendered.revision,
                    )
                )
        for table in trace.rewritten:
            trace.findings.append(
                Finding(
                    rule.id,
                    rule.severity,
                    rendered.path,
                    0,
                    "",
                    f"rewrote {table} (relfilenode changed)",
                    rule.hint,
                    rendered.revision,
                )
            )
    return trace


def trace_locks(dsn: str | None, only: set[str] | None = None) -> list[RevisionTrace]:
    """Apply the chain to a throwaway database (created and dropped here), revision by revision."""
    import os
    import secrets

    from psycopg import sql as psql

    from toolkit import db

    conninfo = db.resolve_dsn(dsn)
    name = f"keyshift_lint_{os.getpid()}_{secrets.token_hex(4)}"
    traces = []
    with db.connection(conninfo, autocommit=True) as admin:
        admin.execute(psql.SQL("CREATE DATABASE {}").format(psql.Identifier(name)))
        try:
            with db.connection(db.with_database(conninfo, name), autocommit=True) as conn:
                for revision in chain():
                    trace = trace_revision(conn, revision_sql(revision))
                    if only is None or revision in only:
                        traces.append(trace)
        finally:
            admin.execute(psql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psql.Identifier(name)))
    return traces
