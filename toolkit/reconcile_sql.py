"""The SQL of a comparison: canonical values, checksums per bucket, the drill-down, one snapshot.

Per bucket and side, one pass computes ``count(*)`` and the sum of a 64-bit
hash (``hashtextextended``) of a canonical text of each row. A sum is
order-independent and, unlike XOR, a duplicated row adds its hash again, so
missing, extra, duplicated and changed rows all move it. The canonical text
compares values by meaning: numerics without trailing zeros (1.0 = 1.00),
timestamps in UTC, NULL apart from '' and 0. Both sides are read in one
REPEATABLE READ snapshot (shared by a second backend through
``pg_export_snapshot()`` when a DSN for it is given), so concurrent writers
never cause a false mismatch. Only mismatching buckets are drilled into: one
SQL join lists the differing keys with the source and target values.

Identifiers come from the catalog (names given by the operator are looked up
there first) and reach SQL through ``psycopg.sql.Identifier``; slice values,
bucket bounds, tolerances and limits are bound parameters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from toolkit import db
from toolkit.errors import UsageError

HASH_BUCKETS = 256  # default buckets (of the key's hash, or of an indexed integer key's range)
RANGE_PREDICATES_MAX = 100  # up to this many mismatching buckets, drill-down uses index ranges
STORED_BUCKETS_MAX = 1000  # buckets kept in a run's details
TIME_STEPS = {"day": dt.timedelta(days=1), "hour": dt.timedelta(hours=1)}
TIME_TYPES = ("timestamptz", "timestamp", "date")
NULL_BUCKET = "null"  # the bucket of rows whose bucket column is NULL


@dataclass(frozen=True)
class Column:
    name: str
    typname: str
    category: str  # pg_type.typcategory: N numeric, D date/time, S string, A array ...


@dataclass
class Side:
    """One side of a comparison: a relation (or a mapped view of it), a slice, its columns."""

    relation: str  # schema.table as the catalog spells it, for output
    source: sql.Composable  # FROM item, aliased t
    columns: dict[str, Column]
    slice: dict[str, Any] = field(default_factory=dict)
    oid: int | None = None  # the relation's, when the FROM item is the relation itself
    # mapping pairs: the token had no key; and what is shown beside a difference (the token)
    unmapped: sql.Composable = field(default_factory=lambda: sql.SQL("false"))
    note: sql.Composable = field(default_factory=lambda: sql.SQL("NULL::text"))

    def col(self, name: str) -> Column:
        if name not in self.columns:
            raise UsageError(
                f"{self.relation} has no column {name!r}; its columns: {', '.join(self.columns)}"
            )
        return self.columns[name]


@dataclass(frozen=True)
class Bucketing:
    column: str | None  # None: the key's hash
    unit: str  # day | hour | <width> | hash


@dataclass
class Difference:
    category: str
    key: dict[str, Any]
    columns: dict[str, dict[str, Any]]
    source_rows: int
    target_rows: int
    note: str | None = None


@dataclass
class Progress:
    step: str
    done: int
    total: int


ProgressFn = Callable[[Progress], None]


def noop(_p: Progress) -> None:
    return None


# ---------------------------------------------------------------- catalog


def relation(
    conn: psycopg.Connection[Any], name: str, role: str
) -> tuple[str, sql.Composable, dict[str, Column], int]:
    """Look a relation up in the catalog: (display name, quoted identifier, columns)."""
    try:
        row = conn.execute(
            "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = pg_catalog.to_regclass(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            (name,),
        ).fetchone()
    except psycopg.errors.InvalidName:
        row = None  # the caller's transaction is aborted: the UsageError below ends it
    if row is None:
        raise UsageError(
            f"{role} {name!r} is not a table or view in this database; give it as schema.table "
            '(quote odd names: schema."Mixed Case")'
        )
    oid, schema, table = row
    cols = {
        r[0]: Column(r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT a.attname, t.typname, t.typcategory FROM pg_catalog.pg_attribute a"
            " JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (oid,),
        ).fetchall()
    }
    return f"{schema}.{table}", sql.Identifier(schema, table), cols, int(oid)


def table_side(conn: psycopg.Connection[Any], name: str, role: str, slice_: dict[str, Any]) -> Side:
    display, ident, cols, oid = relation(conn, name, role)
    side = Side(display, sql.SQL("{} AS t").format(ident), cols, dict(slice_), oid=oid)
    for column in side.slice:
        side.col(column)
    return side


# ---------------------------------------------------------------- canonical values


INTS = ("int2", "int4", "int8")
_FLOATS = ("float4", "float8")


def canonical(column: Column, peer: Column | None = None) -> sql.Composable:
    """A value whose text output compares by meaning, under the run's fixed session settings.

    ``peer`` is the same column on the other side: an integer compared with a
    numeric is normalised as a numeric, a numeric compared with a float as a float.
    """
    ref = sql.SQL("t.{}").format(sql.Identifier(column.name))
    if column.typname in INTS and (peer is None or peer.typname in INTS):
        return ref  # prints as trim_scale prints the same numeric
    if column.category == "N" and column.typname != "money":
        if column.typname in _FLOATS or (peer is not None and peer.typname in _FLOATS):
            return sql.SQL("({})::float8").format(ref)
        return sql.SQL("pg_catalog.trim_scale(({})::numeric)").format(ref)  # 1.0 = 1.00
    # Date/time types print in the run's DateStyle (ISO); a timestamptz as its UTC
    # wall-clock time, whatever zone it was written in (equal to a timestamp
    # holding UTC). +-infinity print as such, apart from NULL.
    if column.typname == "timestamptz":
        return sql.SQL("({} AT TIME ZONE 'UTC')").format(ref)
    if column.typname == "json":
        return sql.SQL("({})::jsonb").format(ref)
    return ref


def text(expr: sql.Composable) -> sql.Composable:
    return sql.SQL("({})::text").format(expr)


def texts(exprs: Iterable[sql.Composable]) -> sql.Composable:
    """ARRAY[...]::text[] of canonical values, for display and comparison by column."""
    return sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(text(e) for e in exprs))


def row_text(exprs: list[sql.Composable]) -> sql.Composable:
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(exprs))


def joined(exprs: list[sql.Composable]) -> sql.Composable:
    """One unambiguous text of several values: a row literal, where NULL is empty,
    '' is quoted ("(,\"\")") and quotes inside values are escaped. One value: its text."""
    if len(exprs) == 1:
        return sql.SQL("pg_catalog.quote_nullable({})").format(text(exprs[0]))
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(exprs))


# ---------------------------------------------------------------- one side's SQL


@dataclass
class Plan:
    """The SQL pieces of a comparison, shared by the checksum pass and the drill-down."""

    source: Side
    target: Side
    key: list[str]
    columns: list[str]
    bucketing: Bucketing
    mapped: bool = False
    # column -> (abs | rel | precision, value); off by default: exact
    tolerances: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def exprs(self, side: Side, names: list[str]) -> list[sql.Composable]:
        other = self.target if side is self.source else self.source
        out = []
        for n in names:
            expr = canonical(side.col(n), other.columns.get(n))
            kind, value = self.tolerances.get(n, ("", None))
            if kind == "precision":  # a whitelisted date_trunc unit
                expr = sql.SQL("pg_catalog.date_trunc({}, {})").format(sql.Literal(value), expr)
            out.append(expr)
        return out

    def within(self) -> tuple[sql.Composable, dict[str, Any]]:
        """True when one source row and one target row differ only within the numeric tolerances.

        A checksum cannot be tolerant: the bucket mismatches and the drill-down decides per row.
        """
        numeric = {n: t for n, t in self.tolerances.items() if t[0] in ("abs", "rel")}
        if not numeric:
            return sql.SQL("false"), {}
        parts: list[sql.Composable] = []
        params: dict[str, Any] = {}
        for i, name in enumerate(self.columns, start=1):
            s, t = (sql.SQL("{}.vals[{}]").format(sql.SQL(a), sql.Literal(i)) for a in ("sa", "ta"))
            same = sql.SQL("{} IS NOT DISTINCT FROM {}").format(s, t)
            if name not in numeric:
                parts.append(same)
                continue
            kind, value = numeric[name]
            params[f"tol{i}"] = Decimal(str(value))
            diff = sql.SQL("abs({}::numeric - {}::numeric)").format(s, t)
            bound: sql.Composable = sql.Placeholder(f"tol{i}")
            if kind == "rel":
                bound = sql.SQL("{} * greatest(abs({}::numeric), abs({}::numeric))").format(bound, s, t)
            parts.append(sql.SQL("({} OR {} <= {})").format(same, diff, bound))
        return sql.SQL("({})").format(sql.SQL(" AND ").join(parts)), params

    def where(self, side: Side, prefix: str) -> tuple[sql.Composable, dict[str, Any]]:
        parts: list[sql.Composable] = [sql.SQL("true")]
        params: dict[str, Any] = {}
        for i, (column, value) in enumerate(side.slice.items()):
            if value is None:
                parts.append(sql.SQL("t.{} IS NULL").format(sql.Identifier(column)))
                continue
            # Bound as text of unknown type: the server reads it as the column's type
            # (a timestamp without an offset is UTC: the run's TimeZone).
            name = f"{prefix}slice{i}"
            parts.append(sql.SQL("t.{} = {}").format(sql.Identifier(column), sql.Placeholder(name)))
            params[name] = str(value)
        return sql.SQL(" AND ").join(parts), params

    def bucket(self, side: Side, prefix: str) -> tuple[sql.Composable, dict[str, Any]]:
        b = self.bucketing
        if b.column is None:
            return (
                sql.SQL("(pg_catalog.hashtextextended({}, 1) & {})::text").format(
                    joined(self.exprs(side, self.key)), sql.Literal(HASH_BUCKETS - 1)
                ),
                {},
            )
        column = side.col(b.column)
        ref = sql.SQL("t.{}").format(sql.Identifier(b.column))
        # Rows whose bucket column is NULL have a bucket of their own.
        null = sql.Literal(NULL_BUCKET)
        if b.unit in TIME_STEPS:
            # date_trunc of a timestamptz works in the run's TimeZone, UTC.
            cast = sql.SQL("::timestamp") if column.typname == "date" else sql.SQL("")
            return (
                sql.SQL("COALESCE(pg_catalog.date_trunc({u}, {r}{c})::text, {n})").format(
                    u=sql.Literal(b.unit), r=ref, c=cast, n=null
                ),
                {},
            )
        name = f"{prefix}width"
        return (
            sql.SQL("COALESCE(pg_catalog.floor(({})::numeric / {})::text, {})").format(
                ref, sql.Placeholder(name), null
            ),
            {name: int(b.unit)},
        )

    def ranges(self, side: Side, buckets: list[str], prefix: str) -> tuple[sql.Composable, dict[str, Any]]:
        """Index-friendly bounds of a few buckets: (col >= lo AND col < hi) OR ..."""
        b = self.bucketing
        if b.column is None or not buckets or len(buckets) > RANGE_PREDICATES_MAX or NULL_BUCKET in buckets:
            return sql.SQL("true"), {}
        column = side.col(b.column)
        ref = sql.SQL("t.{}").format(sql.Identifier(b.column))
        parts = []
        params: dict[str, Any] = {}
        for i, text in enumerate(buckets):
            lo: Any
            hi: Any
            if b.unit in TIME_STEPS:
                lo = dt.datetime.fromisoformat(text)  # "2026-01-01 00:00:00+00" for a timestamptz
                hi = lo + TIME_STEPS[b.unit]
                if column.typname == "date":
                    lo, hi = lo.date(), hi.date()
            else:
                lo = Decimal(text) * int(b.unit)
                hi = lo + int(b.unit)
            parts.append(
                sql.SQL("({r} >= {lo} AND {r} < {hi})").format(
                    r=ref, lo=sql.Placeholder(f"{prefix}lo{i}"), hi=sql.Placeholder(f"{prefix}hi{i}")
                )
            )
            params[f"{prefix}lo{i}"], params[f"{prefix}hi{i}"] = lo, hi
        return sql.SQL("({})").format(sql.SQL(" OR ").join(parts)), params

    def checksum_query(self, side: Side) -> tuple[sql.Composed, dict[str, Any]]:
        where, params = self.where(side, "")
        bucket, bparams = self.bucket(side, "")
        row = row_text(self.exprs(side, self.key + self.columns))
        query = sql.SQL(
            "SELECT b, count(*), sum(h)::text FROM (SELECT {bucket} AS b,"
            " pg_catalog.hashtextextended({row}, 0) AS h FROM {src} WHERE {where}) x GROUP BY b"
        ).format(bucket=bucket, row=row, src=side.source, where=where)
        return query, {**params, **bparams}

    def side_rows(self, side: Side, prefix: str, buckets: list[str]) -> tuple[sql.Composed, dict[str, Any]]:
        where, params = self.where(side, prefix)
        bucket, bparams = self.bucket(side, prefix)
        ranges, rparams = self.ranges(side, buckets, prefix)
        keys = self.exprs(side, self.key)
        query = sql.SQL(
            "SELECT {ktext} AS k, {keys} AS key, {vals} AS vals,"
            " pg_catalog.hashtextextended({row}, 0) AS h, {unmapped} AS unmapped, {note} AS note"
            " FROM {src} WHERE {where} AND {ranges} AND {bucket} = ANY({buckets})"
        ).format(
            ktext=joined(keys),
            keys=texts(keys),
            vals=texts(self.exprs(side, self.columns)),
            row=row_text(self.exprs(side, self.key + self.columns)),
            unmapped=side.unmapped,
            note=side.note,
            src=side.source,
            where=where,
            ranges=ranges,
            bucket=bucket,
            buckets=sql.Placeholder(f"{prefix}buckets"),
        )
        return query, {**params, **bparams, **rparams, f"{prefix}buckets": buckets}


# The drill-down: both sides' rows of the mismatching buckets, grouped by key
# and joined; a key is missing, extra, duplicated, changed, unmapped (mapping
# pairs: the token had no key) or a collision (two tokens, one key).
DRILL_DOWN = """
WITH s AS ({source}), t AS ({target}),
sa AS (SELECT k, min(key) AS key, count(*) AS n, min(h) AS hmin, max(h) AS hmax, sum(h) AS hsum,
              min(vals) AS vals, bool_or(unmapped) AS unmapped,
              string_agg(DISTINCT note, ',') AS note FROM s GROUP BY k),
ta AS (SELECT k, min(key) AS key, count(*) AS n, min(h) AS hmin, max(h) AS hmax, sum(h) AS hsum,
              min(vals) AS vals FROM t GROUP BY k),
j AS MATERIALIZED (
    SELECT COALESCE(sa.key, ta.key) AS key, COALESCE(sa.n, 0) AS ns, COALESCE(ta.n, 0) AS nt,
           sa.vals AS svals, ta.vals AS tvals, sa.note,
           CASE WHEN sa.unmapped THEN 'unmapped'
                WHEN ta.k IS NULL THEN 'missing'
                WHEN sa.k IS NULL THEN 'extra'
                WHEN sa.n > 1 AND {mapped} THEN 'collision'
                WHEN sa.n <> ta.n THEN 'duplicate'
                WHEN sa.n = 1 AND {within} THEN NULL
                WHEN sa.hsum <> ta.hsum OR sa.hmin <> ta.hmin OR sa.hmax <> ta.hmax THEN 'changed'
           END AS category,
           CASE WHEN sa.k IS NULL OR ta.k IS NULL OR sa.unmapped THEN 0
                WHEN sa.n = 1 AND ta.n = 1 AND {within} THEN 1
                WHEN sa.hmin <> ta.hmin OR sa.hmax <> ta.hmax THEN 0
                WHEN sa.n = ta.n AND sa.hsum = ta.hsum THEN sa.n
                WHEN sa.hmin = sa.hmax THEN LEAST(sa.n, ta.n)
                ELSE 0 END AS matched
      FROM sa FULL JOIN ta ON ta.k = sa.k)
SELECT (SELECT COALESCE(sum(matched), 0) FROM j)::bigint,
       (SELECT COALESCE(jsonb_object_agg(category, n), '{{}}') FROM
           (SELECT category, count(*) AS n FROM j WHERE category IS NOT NULL GROUP BY category) c),
       (SELECT COALESCE(jsonb_agg(to_jsonb(r) ORDER BY r.category, r.key), '[]') FROM
           (SELECT category, key, ns, nt, svals, tvals, note FROM j WHERE category IS NOT NULL
             ORDER BY category, key LIMIT {max_rows}) r)
"""


# ---------------------------------------------------------------- running


@dataclass
class Counts:
    rows_source: int = 0
    rows_target: int = 0
    rows_matched: int = 0
    buckets_total: int = 0
    buckets_mismatched: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    buckets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, category: str, count: int, rows: list[Difference]) -> None:
        if count:
            self.categories[category] = self.categories.get(category, 0) + count
        self.differences.extend(rows)


class Snapshot:
    """One REPEATABLE READ snapshot on ``conn``, optionally shared with a second backend."""

    def __init__(self, conn: psycopg.Connection[Any], helper_dsn: str | None, progress: ProgressFn) -> None:
        self.conn = conn
        self.helper: psycopg.Connection[Any] | None = None
        if helper_dsn is not None:
            (snapshot,) = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone() or ("",)
            progress(Progress("snapshot exported", 0, 2))
            self.helper = db.connect(helper_dsn)
            self.helper.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            # SET TRANSACTION SNAPSHOT takes no parameter: the id is quoted as a literal.
            self.helper.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            session_settings(self.helper)

    def both(self, queries: list[tuple[sql.Composed, dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
        """Run two queries: in parallel on the two backends, or one after the other."""
        if self.helper is None:
            return [self.conn.execute(q, p).fetchall() for q, p in queries]
        helper = self.helper
        with ThreadPoolExecutor(max_workers=1) as pool:
            later = pool.submit(lambda: helper.execute(*queries[1]).fetchall())
            first = self.conn.execute(*queries[0]).fetchall()
            return [first, later.result()]

    def close(self) -> None:
        if self.helper is not None:
            self.helper.rollback()
            self.helper.close()


def session_settings(conn: psycopg.Connection[Any]) -> None:
    # Text forms that could depend on the session (arrays of timestamps,
    # intervals, floats) are fixed for the run; the verdict never depends on them.
    for name, value in (
        ("TimeZone", "UTC"),
        ("DateStyle", "ISO, YMD"),
        ("IntervalStyle", "postgres"),
        ("extra_float_digits", "1"),
        # The planner cannot know that a bucket expression has few values: it
        # estimates one group per row and sorts (spilling to disk) instead of
        # hashing a few hundred groups.
        ("enable_sort", "off"),
        # That penalty makes every plan look expensive enough to JIT-compile:
        # seconds of compilation for queries that run in less.
        ("jit", "off"),
    ):
        conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))


def compare(snap: Snapshot, plan: Plan, max_rows: int, progress: ProgressFn, counts: Counts) -> None:
    """Checksums per bucket on both sides, then the drill-down into the buckets that differ."""
    progress(Progress("checksums", 0, 2))
    src_rows, tgt_rows = snap.both([plan.checksum_query(plan.source), plan.checksum_query(plan.target)])
    src = {b: (n, h) for b, n, h in src_rows}
    tgt = {b: (n, h) for b, n, h in tgt_rows}
    names = sorted(set(src) | set(tgt))
    bad = [b for b in names if src.get(b) != tgt.get(b)]
    progress(Progress("buckets compared", len(names), len(names)))
    counts.rows_source += sum(n for n, _ in src.values())
    counts.rows_target += sum(n for n, _ in tgt.values())
    counts.rows_matched += sum(src[b][0] for b in names if b not in bad)
    counts.buckets_total += len(names)
    counts.buckets_mismatched += len(bad)
    counts.buckets.extend(
        {
            "bucket": b,
            "source_rows": src.get(b, (0, None))[0],
            "target_rows": tgt.get(b, (0, None))[0],
            "source_checksum": src.get(b, (0, None))[1],
            "target_checksum": tgt.get(b, (0, None))[1],
            "match": b not in bad,
        }
        for b in names[:STORED_BUCKETS_MAX]
    )
    if not bad:
        return
    progress(Progress("buckets drilled into", 0, len(bad)))
    sq, sp = plan.side_rows(plan.source, "s_", bad)
    tq, tp = plan.side_rows(plan.target, "t_", bad)
    within, wp = plan.within()
    query = sql.SQL(DRILL_DOWN).format(
        source=sq,
        target=tq,
        mapped=sql.SQL("true" if plan.mapped else "false"),
        within=within,
        max_rows=sql.Placeholder("max_rows"),
    )
    row = snap.conn.execute(query, {**sp, **tp, **wp, "max_rows": max_rows}).fetchone()
    assert row is not None
    matched, categories, rows = row
    counts.rows_matched += matched
    diffs = [
        Difference(
            r["category"],
            dict(zip(plan.key, r["key"], strict=True)),
            changed_columns(plan, r["svals"], r["tvals"]),
            r["ns"],
            r["nt"],
            r["note"],
        )
        for r in rows
    ]
    counts.categories.update({k: counts.categories.get(k, 0) + v for k, v in categories.items()})
    counts.differences.extend(diffs)
    progress(Progress("buckets drilled into", len(bad), len(bad)))


def changed_columns(
    plan: Plan, svals: list[Any] | None, tvals: list[Any] | None
) -> dict[str, dict[str, Any]]:
    """The columns whose values differ beyond their tolerance (all of them when one side has no row)."""
    out = {}
    for i, name in enumerate(plan.columns):
        s = svals[i] if svals is not None else None
        t = tvals[i] if tvals is not None else None
        if (
            svals is None
            or tvals is None
            or not (s == t or within_tolerance(plan.tolerances.get(name), s, t))
        ):
            out[name] = {"source": s, "target": t}
    return out


def within_tolerance(tolerance: tuple[str, Any] | None, s: str | None, t: str | None) -> bool:
    if tolerance is None or tolerance[0] not in ("abs", "rel") or s is None or t is None:
        return False
    a, b, bound = Decimal(s), Decimal(t), Decimal(str(tolerance[1]))
    if tolerance[0] == "rel":
        bound *= max(abs(a), abs(b))
    return abs(a - b) <= bound


PRECISIONS = ("milliseconds", "second", "minute", "hour", "day")


def parse_tolerances(value: Any, pair: str) -> dict[str, tuple[str, Any]]:
    """``{"col": "abs:0.001" | "rel:1e-6" | "precision:second"}`` (the CLI's --tolerance COL=...)."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{pair}: tolerances must be an object of column: kind:value, got {value!r}")
    out: dict[str, tuple[str, Any]] = {}
    for column, text in value.items():
        kind, _, amount = str(text).partition(":")
        if kind == "precision" and amount in PRECISIONS:
            out[column] = (kind, amount)
            continue
        try:
            number = Decimal(amount)
        except ArithmeticError:
            number = Decimal(-1)
        if kind not in ("abs", "rel") or not number.is_finite() or number < 0:
            raise UsageError(
                f"{pair}: tolerance {column}={text!r} is not abs:N, rel:N (N >= 0) or "
                f"precision:{'|'.join(PRECISIONS)}"
            )
        out[column] = (kind, number)
    return out


def parse_bucket(text: str | None) -> Bucketing:
    """``COL:day``, ``COL:hour`` or ``COL:N`` (width N of a numeric column); None: the key's hash."""
    if not text:
        return Bucketing(None, "hash")
    column, sep, unit = text.rpartition(":")
    if not sep or not column or not (unit in TIME_STEPS or (unit.isdigit() and int(unit) > 0)):
        raise UsageError(f"--bucket-by {text!r} is not COL:day, COL:hour or COL:N (N a positive width)")
    return Bucketing(column, unit)


def check_bucket(plan: Plan) -> None:
    b = plan.bucketing
    if b.column is None:
        return
    for side in (plan.source, plan.target):
        column = side.col(b.column)
        fits = column.typname in TIME_TYPES if b.unit in TIME_STEPS else column.category == "N"
        if not fits:
            kind = "a date or timestamp" if b.unit in TIME_STEPS else "a number"
            raise UsageError(
                f"--bucket-by {b.column}:{b.unit}: {side.relation}.{b.column} is {column.typname}, not {kind}"
            )
