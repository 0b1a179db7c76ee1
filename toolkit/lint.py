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

import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pglast import ast

from toolkit.errors import UsageError
from toolkit.lint_rules import Rule, ScriptState, all_rules, syntax
from toolkit.lint_rules.lock_budget import RevisionTrace
from toolkit.lint_rules.state import function_state, update_state
from toolkit.migrate import RevisionSql, chain, revision_sql
from toolkit.parsing import (
    SqlSyntaxError,
    Statement,
    code_line,
    comments,
    excerpt,
    plpgsql_statements,
    statements,
)
from toolkit.render import TEMPLATE_SUFFIX
from toolkit.resources import alembic_dir, sql_dir, templates_dir

SILENCE_PREFIX = "keyshift-lint:"


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
    skipped: list[str] = field(default_factory=list)  # files of a directory not linted, and why

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
            "skipped": self.skipped,
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
                rule.id, rule.severity, file, where, excerpt(text), detail, rule.hint, self.revision, reason
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
        body_state = state if isinstance(stmt.node, ast.DoStmt) else function_state(stmt.node)
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


def lint_revision(rendered: RevisionSql) -> list[Finding]:
    return lint_sql(
        rendered.sql, f"{rendered.path} (offline SQL)", revision=rendered.revision, recorded=rendered.recorded
    )


def template_renders(
    renders: Iterable[RevisionSql],
    templates: set[str],
    named: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(file, rendered text, revision) of each distinct render of the templates, and those skipped.

    A template is known by what the upgrades render with it. One they never
    render on their own (included by another, or used by downgrades only) is
    skipped when it was found in a directory, and a usage error when ``named``.
    """
    found, seen = [], set()
    for rendered in renders:
        for origin, text in rendered.recorded:
            file = origin_file(origin)
            if file.split(" ")[0] in templates and (file, text) not in seen:
                seen.add((file, text))
                found.append((file, text, rendered.revision))
    missing = templates - {file.split(" ")[0] for file, _, _ in found}
    if missing & named:
        raise UsageError(
            f"{', '.join(sorted(missing & named))}: no upgrade renders it on its own (a template included "
            "by another is checked in the one that includes it)"
        )
    return found, sorted(missing)


def lint_template_renders(
    renders: Iterable[RevisionSql], templates: set[str], named: set[str], report: Report
) -> None:
    """Each template as the revisions render it, under their lock_timeout."""
    found, skipped = template_renders(renders, templates, named)
    for file, text, revision in found:
        report.findings.extend(lint_sql(text, file, assume_lock_timeout=True, revision=revision))
    report.scripts += len(templates) - len(skipped)
    report.skipped.extend(f"{name}: no upgrade renders it on its own" for name in skipped)


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
    paths = list(paths)
    files = expand_paths(paths)
    named = {relative_path(p) for p in paths if p.is_file()}
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
    if unknown & named:
        raise UsageError(f"{', '.join(sorted(unknown & named))}: not a revision of keyshift's chain")
    report.skipped.extend(f"{name}: not a revision" for name in sorted(unknown - named))
    if templates:
        lint_template_renders(renders or (), templates, named, report)
    return report


def read_text(path: Path) -> str:
    """A file's text; unreadable is a usage error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from None


# ---------------------------------------------------------------- --trace-locks


def trace_findings(trace: RevisionTrace) -> list[Finding]:
    """A revision's locks over its LOCK_BUDGET (and its rewrites), as findings."""
    rule = _rules()["lock_budget"]
    return [
        Finding(
            rule.id,
            rule.severity,
            f"{trace.path} (offline SQL)",  # lines are those of the offline SQL
            v["line"],
            v["statement"],
            v["detail"],
            rule.hint,
            trace.revision,
        )
        for v in trace.violations
    ]
