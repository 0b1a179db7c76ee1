"""Pre-flight checks: the SQL files of ``checks/``, run read-only before a step.

A check is one ``.sql`` file: a header comment, then one SELECT that returns
one row per violation (no rows = pass)::

    -- id: long_transactions
    -- severity: error
    -- steps: any
    -- summary: transactions open longer than preflight.max_transaction_age
    -- remedy: end them (COMMIT/ROLLBACK, or pg_terminate_backend) before the step
    -- params: preflight.max_transaction_age
    -- requires: keyshift.settings
    select ... where xact_start < clock_timestamp() - $1::interval

``params`` binds ``$1``, ``$2``... in order: a setting key (its value in
``keyshift.settings``, else the default its ``define_setting`` call declares
in ``sql/``) or a value the runner knows (``@step``, ``@revisions``,
``@head_revision``, ``@lineage``). ``requires`` names relations without which
the check is skipped. Every check runs in one READ ONLY transaction, each in
its own savepoint, under a statement_timeout and a lock_timeout, so a check
can neither write nor queue behind DDL. The module is named ``preflight`` (not
``checks``) because the installed package maps the ``checks/`` folder to
``toolkit/checks``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pglast import ast, visitors
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from toolkit import db
from toolkit.errors import EXIT_FAIL, EXIT_USAGE, KeyshiftError, UsageError
from toolkit.parsing import SqlSyntaxError, statements
from toolkit.resources import checks_dir as shipped_checks_dir
from toolkit.resources import sql_dir

SEVERITIES = ("error", "warning")
ANY, ALL = "any", "all"
REQUIRED_KEYS = ("id", "severity", "steps", "summary", "remedy")
OPTIONAL_KEYS = ("params", "requires")
RUNTIME_PARAMS = ("@step", "@revisions", "@head_revision", "@lineage")
SAMPLE_ROWS = 20
# Used when neither keyshift.settings nor sql/ says otherwise.
FALLBACK_TIMEOUTS = {"preflight.statement_timeout": "10 seconds", "preflight.lock_timeout": "1 second"}

_HEADER_LINE = re.compile(r"^--\s*([a-z_]+)\s*:\s*(.*?)\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SETTING = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_RELATION = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Check:
    """One check file: its header and its query."""

    id: str
    severity: str
    steps: tuple[str, ...]
    summary: str
    remedy: str
    params: tuple[str, ...]
    requires: tuple[str, ...]
    sql: str = field(repr=False)
    path: Path


@dataclass
class Result:
    """What one check found."""

    id: str
    severity: str
    status: str  # pass | fail | error (could not run) | skipped (a required relation is absent)
    violations: int
    summary: str
    remedy: str
    steps: list[str]
    file: str
    seconds: float
    message: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the first SAMPLE_ROWS violations

    @property
    def blocking(self) -> bool:
        """An error-severity check that failed or could not run: the step must not start."""
        return self.severity == "error" and self.status in ("fail", "error")


@dataclass
class Report:
    step: str
    results: list[Result]

    @property
    def ok(self) -> bool:
        return not any(r.blocking for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "ok": self.ok,
            "failed": [r.id for r in self.results if r.blocking],
            "warnings": [r.id for r in self.results if r.status in ("fail", "error") and not r.blocking],
            "checks": [asdict(r) for r in self.results],
        }


# ---------------------------------------------------------------- loading


class _ParamRefs(visitors.Visitor):
    """The highest $n a statement uses."""

    highest = 0

    def visit_ParamRef(self, ancestors: Any, node: ast.ParamRef) -> None:
        self.highest = max(self.highest, node.number or 0)


def _header(path: Path, text: str) -> dict[str, str]:
    """The ``-- key: value`` lines at the top of a check file."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        match = _HEADER_LINE.match(stripped)
        if not match:
            continue  # a comment that explains, not a header line
        key, value = match.groups()
        if key not in REQUIRED_KEYS + OPTIONAL_KEYS:
            raise _malformed(path, f"unknown header line {key!r}")
        if key in values:
            raise _malformed(path, f"header line {key!r} given twice")
        values[key] = value
    return values


def _malformed(path: Path, problem: str) -> UsageError:
    return UsageError(
        f"check file {path}: {problem}; a check starts with the comment lines -- id:, -- severity: "
        "(error|warning), -- steps:, -- summary:, -- remedy: (optional -- params:, -- requires:), "
        "then one SELECT"
    )


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def parse_check(path: Path) -> Check:
    """Read one check file; a malformed one is a UsageError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"check file {path}: cannot read it ({exc})") from None
    header = _header(path, text)
    missing = [k for k in REQUIRED_KEYS if not header.get(k)]
    if missing:
        raise _malformed(path, f"no {', '.join(repr(k + ':') for k in missing)} header line")
    if not _NAME.match(header["id"]):
        raise _malformed(path, f"id {header['id']!r} is not lower_case_with_underscores")
    if header["severity"] not in SEVERITIES:
        raise _malformed(path, f"severity {header['severity']!r} is not error or warning")
    steps = _list(header["steps"])
    bad_steps = [s for s in steps if not _NAME.match(s) or s == ALL]
    if not steps or bad_steps:
        raise _malformed(path, f"steps {header['steps']!r} is not a list of step names (any, backfill, ...)")
    params = _list(header.get("params", ""))
    bad_params = [p for p in params if not (_SETTING.match(p) or p in RUNTIME_PARAMS)]
    if bad_params:
        raise _malformed(
            path,
            f"params {', '.join(bad_params)} are neither setting keys (area.name) "
            f"nor one of {', '.join(RUNTIME_PARAMS)}",
        )
    requires = _list(header.get("requires", ""))
    bad_relations = [r for r in requires if not _RELATION.match(r)]
    if bad_relations:
        raise _malformed(path, f"requires {', '.join(bad_relations)}: give relations as schema.name")
    try:
        parsed = statements(text, origin=f"check file {path}")
    except SqlSyntaxError as exc:
        raise UsageError(f"{exc.message}; fix the query") from None
    if len(parsed) != 1 or not isinstance(parsed[0].node, ast.SelectStmt):
        raise _malformed(path, f"the query must be exactly one SELECT (found {len(parsed)} statements)")
    refs = _ParamRefs()
    refs(parsed[0].node)
    if refs.highest > len(params):
        raise _malformed(path, f"the query uses ${refs.highest} but the header declares {len(params)} params")
    return Check(
        id=header["id"],
        severity=header["severity"],
        steps=steps,
        summary=header["summary"],
        remedy=header["remedy"],
        params=params,
        requires=requires,
        sql=parsed[0].text,
        path=path,
    )


@functools.lru_cache(maxsize=1024)
def _parse_check_cached(path: Path, mtime_ns: int, size: int) -> Check:
    """parse_check once per version of a file (parsing with pglast is most of a run's client time)."""
    return parse_check(path)


def load(checks_dir: Path | None = None) -> list[Check]:
    """The shipped checks, plus those of ``checks_dir``; two checks with one id are refused."""
    dirs = [shipped_checks_dir()]
    if checks_dir is not None:
        if not Path(checks_dir).is_dir():
            raise UsageError(f"--checks-dir {checks_dir}: not a directory; give a folder of .sql check files")
        dirs.append(Path(checks_dir))
    checks: dict[str, Check] = {}
    for directory in dirs:
        for path in sorted(directory.glob("*.sql")):
            stat = path.stat()
            check = _parse_check_cached(path, stat.st_mtime_ns, stat.st_size)
            if check.id in checks:
                raise UsageError(
                    f"check id {check.id!r} is defined twice: {checks[check.id].path} and {path}; "
                    "rename one (ids are unique)"
                )
            checks[check.id] = check
    return sorted(checks.values(), key=lambda c: c.id)


def plan(
    step: str | None = None,
    only: Iterable[str] = (),
    skip: Iterable[str] = (),
    checks_dir: Path | None = None,
) -> list[Check]:
    """The checks a run would execute; unknown steps or ids are a UsageError listing the known ones.

    Without ``step``, the checks of step ``any``; with a step, those plus the
    step's own; ``all``, every check. ``only`` runs exactly the checks named,
    whatever their steps; ``skip`` leaves checks out.
    """
    checks = load(checks_dir)
    step = step or ANY
    known_steps = sorted({s for c in checks for s in c.steps} | {ANY, ALL})
    if step not in known_steps:
        raise UsageError(f"unknown step {step!r} for --for; known steps: {', '.join(known_steps)}")
    ids = {c.id for c in checks}
    only, skip = _ids(only), _ids(skip)
    unknown = sorted((set(only) | set(skip)) - ids)
    if unknown:
        raise UsageError(f"unknown check id {', '.join(unknown)}; known checks: {', '.join(sorted(ids))}")
    if only:
        selected = [c for c in checks if c.id in only]
    else:
        selected = [c for c in checks if step == ALL or ANY in c.steps or step in c.steps]
    return [c for c in selected if c.id not in skip]


def _ids(values: Iterable[str]) -> list[str]:
    """Ids given repeatedly or comma-separated."""
    return [part for value in values for part in _list(value)]


# ---------------------------------------------------------------- running


def run(
    conn: psycopg.Connection[Any],
    step: str | None = None,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    checks_dir: Path | None = None,
) -> Report:
    """Run the planned checks in one READ ONLY transaction; returns every check's result."""
    selected = plan(step, only, skip, checks_dir)
    step = step or ANY
    results: list[Result] = []
    with _read_only(conn):
        values = ParamValues(conn, step)
        _set_timeouts(conn, values)
        for check in selected:
            results.append(_run_check(conn, check, values))
    return Report(step, results)


def require(conn: psycopg.Connection[Any], step: str) -> Report:
    """Run the checks of ``step``; a failed error-severity check is a KeyshiftError (exit 1)."""
    report = run(conn, step)
    failed = [r for r in report.results if r.blocking]
    if failed:
        first = failed[0]
        detail = first.message or f"{first.violations} violation(s): {first.summary}"
        raise KeyshiftError(
            f"pre-flight for {step} failed: {', '.join(r.id for r in failed)} ({first.id}: {detail}; "
            f"remedy: {first.remedy}); details: keyshift preflight --for {step}",
            EXIT_FAIL,
        )
    return report


@contextmanager
def _read_only(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """BEGIN ... READ ONLY (repeatable read: every check sees one snapshot), then commit."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise KeyshiftError(
            "pre-flight needs a connection with no transaction open (it runs in its own READ ONLY "
            "transaction); commit or roll back first",
            EXIT_USAGE,
        )
    saved = (conn.read_only, conn.isolation_level)
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            yield
    finally:
        conn.read_only, conn.isolation_level = saved


def _set_timeouts(conn: psycopg.Connection[Any], values: ParamValues) -> None:
    """SET LOCAL statement_timeout / lock_timeout from the preflight.* settings (intervals)."""
    for name, key in (
        ("statement_timeout", "preflight.statement_timeout"),
        ("lock_timeout", "preflight.lock_timeout"),
    ):
        value = values.setting(key) or FALLBACK_TIMEOUTS[key]
        conn.execute(
            "SELECT pg_catalog.set_config(%s, (extract(epoch FROM %s::interval) * 1000)::bigint::text, true)",
            (name, value),
        )


def _run_check(conn: psycopg.Connection[Any], check: Check, values: ParamValues) -> Result:
    started = time.perf_counter()
    result = Result(
        id=check.id,
        severity=check.severity,
        status="pass",
        violations=0,
        summary=check.summary,
        remedy=check.remedy,
        steps=list(check.steps),
        file=str(check.path),
        seconds=0.0,
    )
    try:
        with conn.transaction():  # a savepoint: a failing check does not end the others
            try:
                params = [values.get(p) for p in check.params]
            except KeyshiftError as exc:
                result.status, result.message = "error", exc.message
                return result
            absent = [r for r in check.requires if not _relation_exists(conn, r)]
            if absent:
                result.status = "skipped"
                result.message = f"needs {', '.join(absent)}, absent in this database"
                return result
            with psycopg.RawCursor(conn, row_factory=dict_row) as cur:
                cur.execute(check.sql, params or None)
                rows = cur.fetchall()
                result.columns = [d.name for d in cur.description or ()]
    except psycopg.Error as exc:
        if db.is_connection_loss(exc):
            raise
        result.status, result.message = "error", db.describe_pg_error(exc)
    else:
        result.violations = len(rows)
        result.rows = [dict(r) for r in rows[:SAMPLE_ROWS]]
        if rows:
            result.status = "fail"
    result.seconds = round(time.perf_counter() - started, 4)
    return result


def _relation_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    """Whether schema.name exists, read from the catalogs (to_regclass raises on a schema without USAGE)."""
    schema, _, relation = name.partition(".")
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s)",
        (schema, relation),
    ).fetchone()
    return bool(row and row[0])


class ParamValues:
    """Values for the ``params`` of checks: settings, and what the runner knows."""

    def __init__(self, conn: psycopg.Connection[Any], step: str) -> None:
        self.conn = conn
        self.step = step
        self.settings: dict[str, str | None] = {}
        try:
            with conn.transaction():
                if _relation_exists(conn, "keyshift.settings"):
                    self.settings = dict(conn.execute("SELECT key, value FROM keyshift.settings").fetchall())
        except psycopg.errors.InsufficientPrivilege:
            pass  # a role that cannot read the settings gets the defaults declared in sql/

    def setting(self, key: str) -> str | None:
        if key in self.settings:
            return self.settings[key]
        return declared_defaults().get(key)

    def get(self, name: str) -> Any:
        if name == "@step":
            return self.step
        if name in ("@revisions", "@head_revision", "@lineage"):
            return self.revisions[name]
        if name not in self.settings and name not in declared_defaults():
            raise KeyshiftError(f"setting {name} is not defined in this database or in keyshift's sql/")
        return self.setting(name)

    @functools.cached_property
    def revisions(self) -> dict[str, Any]:
        """The chain this keyshift ships, its head, and the revisions the database has applied."""
        from toolkit import migrate

        script = _script()
        current = migrate.current_revision(self.conn)
        try:
            lineage = [r.revision for r in script.iterate_revisions(current, "base")] if current else []
        except Exception:  # a revision this keyshift does not know: no lineage
            lineage = []
        return {
            "@revisions": [r.revision for r in script.walk_revisions()],
            "@head_revision": script.get_current_head(),
            "@lineage": lineage,
        }


@functools.lru_cache(maxsize=1)
def _script() -> Any:
    """Alembic's view of the revisions this keyshift ships (read once per process)."""
    from toolkit import migrate

    return migrate.script()


class _DefineSetting(visitors.Visitor):
    """keyshift.define_setting('key', 'kind', 'default', ...) calls of a script."""

    def __init__(self) -> None:
        self.found: dict[str, str | None] = {}

    def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> None:
        name = [getattr(part, "sval", None) for part in node.funcname or ()]
        if name[-1:] != ["define_setting"] or not node.args or len(node.args) < 3:
            return
        key, default = (_constant(a) for a in (node.args[0], node.args[2]))
        if isinstance(key, str):
            self.found[key] = default


def _constant(node: Any) -> str | None:
    if isinstance(node, ast.A_Const) and not node.isnull and node.val is not None:
        return str(getattr(node.val, "sval", None) or getattr(node.val, "ival", None) or "")
    return None


@functools.lru_cache(maxsize=1)
def declared_defaults() -> dict[str, str | None]:
    """Every setting's default as sql/*.sql declares it (for databases without keyshift.settings)."""
    found: dict[str, str | None] = {}
    for path in sorted(sql_dir().glob("*.sql")):
        visitor = _DefineSetting()
        for stmt in statements(path.read_text(encoding="utf-8"), origin=str(path)):
            visitor(stmt.node)
        found.update(visitor.found)
    return found
