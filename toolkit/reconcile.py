"""Reconciliation: counts and checksums per bucket inside Postgres, drill-down to the differing rows.

Per bucket and side, one pass computes ``count(*)`` and the sum of a 64-bit
hash (``hashtextextended``) of a canonical text of each row. A sum is
order-independent and, unlike XOR, a duplicated row adds its hash again, so
missing, extra, duplicated and changed rows all move it. The canonical text
compares values by meaning: numerics without trailing zeros (1.0 = 1.00),
timestamps in UTC, NULL quoted apart from '' and 0. Both sides are read in one
REPEATABLE READ snapshot (shared by a second backend through
``pg_export_snapshot()`` when a DSN for it is given), so concurrent writers
never cause a false mismatch. Only mismatching buckets are drilled into: one
SQL join lists the differing keys with the source and target values.

Identifiers come from the catalog (names given by the operator are looked up
there first) and reach SQL through ``psycopg.sql.Identifier``; slice values,
bucket bounds and limits are bound parameters.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from toolkit import db
from toolkit.control import get_setting, require_control_schema
from toolkit.errors import UsageError

MODES = ("strict", "lenient")
HASH_BUCKETS = 256  # default buckets: the key's hash, when no --bucket-by is given
RANGE_PREDICATES_MAX = 100  # up to this many mismatching buckets, drill-down uses index ranges
STORED_BUCKETS_MAX = 1000  # buckets kept in a run's details
# Violations of a relocation's invariants fail the verdict in any mode.
INVARIANTS = ("touched_outside_slice", "live_in_both")
_TIME_STEPS = {"day": dt.timedelta(days=1), "hour": dt.timedelta(hours=1)}
_TIME_TYPES = ("timestamptz", "timestamp", "date")


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


@dataclass
class Result:
    pair: str
    kind: str
    source: str
    target: str
    mode: str
    threshold: Decimal
    started_at: dt.datetime
    finished_at: dt.datetime
    duration_ms: float
    rows_source: int
    rows_target: int
    rows_matched: int
    buckets_total: int
    buckets_mismatched: int
    match_ratio: Decimal
    verdict: str
    categories: dict[str, int]
    differences: list[Difference]
    buckets: list[dict[str, Any]]
    notes: list[str]
    run_id: int | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["match_percent"] = round(float(self.match_ratio) * 100, 4)
        return data


ProgressFn = Callable[[Progress], None]


def _noop(_p: Progress) -> None:
    return None


# ---------------------------------------------------------------- catalog


def relation(
    conn: psycopg.Connection[Any], name: str, role: str
) -> tuple[str, sql.Composable, dict[str, Column]]:
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
    return f"{schema}.{table}", sql.Identifier(schema, table), cols


def table_side(conn: psycopg.Connection[Any], name: str, role: str, slice_: dict[str, Any]) -> Side:
    display, ident, cols = relation(conn, name, role)
    side = Side(display, sql.SQL("{} AS t").format(ident), cols, dict(slice_))
    for column in side.slice:
        side.col(column)
    return side


# ---------------------------------------------------------------- canonical values


def canonical(column: Column, peer: Column | None = None) -> sql.Composable:
    """Text of a value that compares by meaning, independent of the session's settings."""
    ref = sql.SQL("t.{}").format(sql.Identifier(column.name))
    floats = ("float4", "float8")
    if column.category == "N" and column.typname != "money":
        if column.typname in floats or (peer is not None and peer.typname in floats):
            return sql.SQL("({})::float8::text").format(ref)
        return sql.SQL("pg_catalog.trim_scale(({})::numeric)::text").format(ref)
    # Date/time types print in the run's fixed DateStyle (ISO); a timestamptz as
    # its UTC wall-clock time, whatever zone it was written in (and equal to a
    # timestamp holding UTC). Cheaper than to_char, and +-infinity stay apart from NULL.
    if column.typname == "timestamptz":
        return sql.SQL("({} AT TIME ZONE 'UTC')::text").format(ref)
    if column.typname == "json":
        return sql.SQL("({})::jsonb::text").format(ref)
    return sql.SQL("({})::text").format(ref)


def _joined(exprs: Iterable[sql.Composable]) -> sql.Composable:
    """One unambiguous text of several text values: a row literal, where NULL is
    empty and '' is quoted ("(,\"\")"), and quotes inside values are escaped."""
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

    def exprs(self, side: Side, names: list[str]) -> list[sql.Composable]:
        other = self.target if side is self.source else self.source
        return [canonical(side.col(n), other.columns.get(n)) for n in names]

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
                    _joined(self.exprs(side, self.key)), sql.Literal(HASH_BUCKETS - 1)
                ),
                {},
            )
        column = side.col(b.column)
        ref = sql.SQL("t.{}").format(sql.Identifier(b.column))
        if b.unit in _TIME_STEPS:
            # date_trunc of a timestamptz works in the run's TimeZone, UTC.
            cast = sql.SQL("::timestamp") if column.typname == "date" else sql.SQL("")
            return (
                sql.SQL("pg_catalog.date_trunc({u}, {r}{c})::text").format(
                    u=sql.Literal(b.unit), r=ref, c=cast
                ),
                {},
            )
        name = f"{prefix}width"
        return (
            sql.SQL("pg_catalog.floor(({})::numeric / {})::text").format(ref, sql.Placeholder(name)),
            {name: int(b.unit)},
        )

    def ranges(self, side: Side, buckets: list[str], prefix: str) -> tuple[sql.Composable, dict[str, Any]]:
        """Index-friendly bounds of a few buckets: (col >= lo AND col < hi) OR ..."""
        b = self.bucketing
        if b.column is None or not buckets or len(buckets) > RANGE_PREDICATES_MAX:
            return sql.SQL("true"), {}
        column = side.col(b.column)
        ref = sql.SQL("t.{}").format(sql.Identifier(b.column))
        parts = []
        params: dict[str, Any] = {}
        for i, text in enumerate(buckets):
            lo: Any
            hi: Any
            if b.unit in _TIME_STEPS:
                lo = dt.datetime.fromisoformat(text)  # "2026-01-01 00:00:00+00" for a timestamptz
                hi = lo + _TIME_STEPS[b.unit]
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
        row_text = _joined(self.exprs(side, self.key + self.columns))
        query = sql.SQL(
            "SELECT b, count(*), sum(h)::text FROM (SELECT {bucket} AS b,"
            " pg_catalog.hashtextextended({row}, 0) AS h FROM {src} WHERE {where}) x GROUP BY b"
        ).format(bucket=bucket, row=row_text, src=side.source, where=where)
        return query, {**params, **bparams}

    def side_rows(self, side: Side, prefix: str, buckets: list[str]) -> tuple[sql.Composed, dict[str, Any]]:
        where, params = self.where(side, prefix)
        bucket, bparams = self.bucket(side, prefix)
        ranges, rparams = self.ranges(side, buckets, prefix)
        keys = self.exprs(side, self.key)
        query = sql.SQL(
            "SELECT {ktext} AS k, ARRAY[{keys}]::text[] AS key, ARRAY[{vals}]::text[] AS vals,"
            " pg_catalog.hashtextextended({row}, 0) AS h, {unmapped} AS unmapped, {note} AS note"
            " FROM {src} WHERE {where} AND {ranges} AND {bucket} = ANY({buckets})"
        ).format(
            ktext=_joined(keys),
            keys=sql.SQL(", ").join(keys),
            vals=sql.SQL(", ").join(self.exprs(side, self.columns)) if self.columns else sql.SQL(""),
            row=_joined(self.exprs(side, self.key + self.columns)),
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
                WHEN sa.hsum <> ta.hsum OR sa.hmin <> ta.hmin OR sa.hmax <> ta.hmax THEN 'changed'
           END AS category,
           CASE WHEN sa.k IS NULL OR ta.k IS NULL OR sa.unmapped
                     OR sa.hmin <> ta.hmin OR sa.hmax <> ta.hmax THEN 0
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
            _session_settings(self.helper)

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


def _session_settings(conn: psycopg.Connection[Any]) -> None:
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
    query = sql.SQL(DRILL_DOWN).format(
        source=sq,
        target=tq,
        mapped=sql.SQL("true" if plan.mapped else "false"),
        max_rows=sql.Placeholder("max_rows"),
    )
    row = snap.conn.execute(query, {**sp, **tp, "max_rows": max_rows}).fetchone()
    assert row is not None
    matched, categories, rows = row
    counts.rows_matched += matched
    diffs = [
        Difference(
            r["category"],
            dict(zip(plan.key, r["key"], strict=True)),
            _changed(plan.columns, r["svals"], r["tvals"]),
            r["ns"],
            r["nt"],
            r["note"],
        )
        for r in rows
    ]
    counts.categories.update({k: counts.categories.get(k, 0) + v for k, v in categories.items()})
    counts.differences.extend(diffs)
    progress(Progress("buckets drilled into", len(bad), len(bad)))


def _changed(
    columns: list[str], svals: list[Any] | None, tvals: list[Any] | None
) -> dict[str, dict[str, Any]]:
    """The columns whose values differ (all of them when one side has no row)."""
    out = {}
    for i, name in enumerate(columns):
        s = svals[i] if svals is not None else None
        t = tvals[i] if tvals is not None else None
        if svals is None or tvals is None or s != t:
            out[name] = {"source": s, "target": t}
    return out


# ---------------------------------------------------------------- pair kinds


def parse_bucket(text: str | None) -> Bucketing:
    """``COL:day``, ``COL:hour`` or ``COL:N`` (width N of a numeric column); None: the key's hash."""
    if not text:
        return Bucketing(None, "hash")
    column, sep, unit = text.rpartition(":")
    if not sep or not column or not (unit in _TIME_STEPS or (unit.isdigit() and int(unit) > 0)):
        raise UsageError(f"--bucket-by {text!r} is not COL:day, COL:hour or COL:N (N a positive width)")
    return Bucketing(column, unit)


def _check_bucket(plan: Plan) -> None:
    b = plan.bucketing
    if b.column is None:
        return
    for side in (plan.source, plan.target):
        column = side.col(b.column)
        fits = column.typname in _TIME_TYPES if b.unit in _TIME_STEPS else column.category == "N"
        if not fits:
            kind = "a date or timestamp" if b.unit in _TIME_STEPS else "a number"
            raise UsageError(
                f"--bucket-by {b.column}:{b.unit}: {side.relation}.{b.column} is {column.typname}, not {kind}"
            )


def _names(spec: dict[str, Any], field_: str, pair: str, required: bool = True) -> list[str] | None:
    value = spec.get(field_)
    if value is None and not required:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{pair}: {field_} must be a non-empty list of column names, got {value!r}")
    return value


def _slice(spec: dict[str, Any], field_: str, pair: str) -> dict[str, Any]:
    value = spec.get(field_) or {}
    if not isinstance(value, dict):
        raise UsageError(f"{pair}: {field_} must be an object of column: value, got {value!r}")
    return value


def _plan(snap: Snapshot, spec: dict[str, Any], pair: str, source: Side | None = None) -> Plan:
    """The comparison a table-like spec describes, every name checked against the catalog."""
    both = _slice(spec, "slice", pair)
    src = source or table_side(
        snap.conn, str(spec.get("source")), "source", {**both, **_slice(spec, "source_slice", pair)}
    )
    tgt = table_side(
        snap.conn, str(spec.get("target")), "target", {**both, **_slice(spec, "target_slice", pair)}
    )
    key = _names(spec, "key", pair) or []
    columns = _names(spec, "columns", pair, required=False)
    if columns is None:
        skip = set(key) | set(src.slice) | set(tgt.slice) | {spec.get("source_marker")}
        columns = [c for c in src.columns if c in tgt.columns and c not in skip]
    for name in key + columns:
        src.col(name)
        tgt.col(name)
    plan = Plan(src, tgt, key, columns, parse_bucket(spec.get("bucket_by")))
    _check_bucket(plan)
    return plan


def _at(column: Column, alias: str) -> sql.Composable:
    """A timestamptz for resolving a token at this column's time (dates: midnight UTC)."""
    ref = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column.name))
    if column.typname == "timestamptz":
        return ref
    return sql.SQL("({}::timestamp AT TIME ZONE 'UTC')").format(ref)


_BROKER = sql.SQL("keyshift.setting('registry.legacy_broker')")


def kind_table(
    snap: Snapshot, spec: dict[str, Any], pair: str, max_rows: int, progress: ProgressFn
) -> tuple[Counts, str, str]:
    plan = _plan(snap, spec, pair)
    counts = Counts()
    compare(snap, plan, max_rows, progress, counts)
    return counts, plan.source.relation, plan.target.relation


def kind_mapping(
    snap: Snapshot, spec: dict[str, Any], pair: str, max_rows: int, progress: ProgressFn
) -> tuple[Counts, str, str]:
    """Legacy rows mapped token -> key through the registry at their own time, against the target."""
    display, ident, cols = relation(snap.conn, str(spec.get("source")), "source")
    probe = Side(display, ident, cols)
    token = probe.col(str(spec.get("token_column", "instrument_token")))
    at = probe.col(str(spec.get("at_column")))
    key_column = str(spec.get("key_column", "instrument_key"))
    if key_column in cols:
        raise UsageError(
            f"{pair}: {display} already has a column {key_column!r}; it cannot be the mapped key"
        )
    mapped = sql.SQL(
        "(SELECT s.*, instrument_registry.resolve_key({broker}, s.{token}, {at}) AS {key}"
        " FROM {src} AS s) AS t"
    ).format(
        broker=_BROKER,
        token=sql.Identifier(token.name),
        at=_at(at, "s"),
        key=sql.Identifier(key_column),
        src=ident,
    )
    side = Side(
        display,
        mapped,
        {**cols, key_column: Column(key_column, "text", "S")},
        _slice(spec, "source_slice", pair),
        unmapped=sql.SQL("t.{} IS NULL").format(sql.Identifier(key_column)),
        note=sql.SQL("t.{}::text").format(sql.Identifier(token.name)),
    )
    plan = _plan(snap, spec, pair, source=side)
    plan.mapped = True
    counts = Counts()
    compare(snap, plan, max_rows, progress, counts)
    return counts, display, plan.target.relation


def _problem_rows(
    snap: Snapshot, side: Side, keys: list[str], where: sql.Composable, params: dict[str, Any], max_rows: int
) -> tuple[int, list[list[str]]]:
    exprs = [canonical(side.col(k)) for k in keys]
    query = sql.SQL(
        "SELECT count(*) OVER (), ARRAY[{keys}]::text[] AS key FROM {src} WHERE {where}"
        " ORDER BY 2 LIMIT {lim}"
    ).format(keys=sql.SQL(", ").join(exprs), src=side.source, where=where, lim=sql.Placeholder("max_rows"))
    rows = snap.conn.execute(query, {**params, "max_rows": max_rows}).fetchall()
    return (rows[0][0] if rows else 0), [r[1] for r in rows]


def _keyed(category: str, names: list[str], keys: list[list[str]], target_rows: int) -> list[Difference]:
    return [Difference(category, dict(zip(names, k, strict=True)), {}, 1, target_rows) for k in keys]


def kind_relocation(
    snap: Snapshot, spec: dict[str, Any], pair: str, max_rows: int, progress: ProgressFn
) -> tuple[Counts, str, str]:
    """A moved slice: the target's slice equals the source's, rows outside it are untouched,
    and after cleanup no key is live in both."""
    plan = _plan(snap, spec, pair)
    counts = Counts()
    src, tgt = plan.source, plan.target
    if spec.get("purged_at"):
        counts.notes.append(
            f"source slice purged at {spec['purged_at']}: contents not compared, invariants only"
        )
    else:
        compare(snap, plan, max_rows, progress, counts)
    marker_name = spec.get("source_marker")
    if not marker_name:
        return counts, src.relation, tgt.relation
    marker = sql.Identifier(src.col(str(marker_name)).name)
    in_slice, params = plan.where(src, "")
    # Rows outside the slice must never carry the relocation's mark.
    outside = sql.SQL("NOT COALESCE(({}), false) AND t.{} IS NOT NULL").format(in_slice, marker)
    # Problem rows are named by the slice columns too: outside the slice they differ.
    names = list(dict.fromkeys([*src.slice, *plan.key]))
    n, keys = _problem_rows(snap, src, names, outside, params, max_rows)
    counts.add("touched_outside_slice", n, _keyed("touched_outside_slice", names, keys, 0))
    if spec.get("cleaned_at"):
        t_where, t_params = plan.where(tgt, "t_")
        live = sql.SQL("({w}) AND t.{m} IS NULL AND {k} IN (SELECT {tk} FROM {tsrc} WHERE {tw})").format(
            w=in_slice,
            m=marker,
            k=_joined(plan.exprs(src, plan.key)),
            tk=_joined(plan.exprs(tgt, plan.key)),
            tsrc=tgt.source,
            tw=t_where,
        )
        n, keys = _problem_rows(snap, src, names, live, {**params, **t_params}, max_rows)
        counts.add("live_in_both", n, _keyed("live_in_both", names, keys, 1))
    return counts, src.relation, tgt.relation


KEY_COVERAGE = """
WITH r AS (
    SELECT ARRAY[{identity}]::text[] AS key, t.{token}::text AS token, t.{key} AS actual,
           CASE WHEN t.{key} IS NOT NULL AND t.{token} IS NOT NULL
                THEN instrument_registry.resolve_key({broker}, t.{token},
                                                     COALESCE({at}, pg_catalog.now())) END AS expected
      FROM {src} AS t),
c AS MATERIALIZED (
    SELECT *, CASE WHEN actual IS NULL THEN 'null_key'
                   WHEN token IS NULL THEN NULL
                   WHEN expected IS NULL THEN 'unmapped_token'
                   WHEN expected <> actual THEN 'key_mismatch' END AS category
      FROM r)
SELECT (SELECT count(*) FROM c), (SELECT count(actual) FROM c),
       (SELECT count(*) FROM c WHERE category IS NULL),
       (SELECT COALESCE(jsonb_object_agg(category, n), '{{}}') FROM
           (SELECT category, count(*) AS n FROM c WHERE category IS NOT NULL GROUP BY category) x),
       (SELECT COALESCE(jsonb_agg(to_jsonb(y) ORDER BY y.category, y.key), '[]') FROM
           (SELECT category, key, token, actual, expected FROM c WHERE category IS NOT NULL
             ORDER BY category, key LIMIT {max_rows}) y)
"""


def kind_key_coverage(
    snap: Snapshot, spec: dict[str, Any], pair: str, max_rows: int, progress: ProgressFn
) -> tuple[Counts, str, str]:
    """A token table against the registry: every row has a key, and it is the key its token meant then."""
    display, ident, cols = relation(snap.conn, str(spec.get("table")), "table")
    side = Side(display, ident, cols)
    identity = _names(spec, "identity", pair) or []
    token = side.col(str(spec.get("token_column", "instrument_token")))
    key = side.col(str(spec.get("key_column", "instrument_key")))
    time_name = spec.get("time_column")
    at = _at(side.col(str(time_name)), "t") if time_name else sql.SQL("NULL::timestamptz")
    progress(Progress("rows checked", 0, 1))
    query = sql.SQL(KEY_COVERAGE).format(
        identity=sql.SQL(", ").join(canonical(side.col(c)) for c in identity),
        token=sql.Identifier(token.name),
        key=sql.Identifier(key.name),
        broker=_BROKER,
        at=at,
        src=ident,
        max_rows=sql.Placeholder("max_rows"),
    )
    row = snap.conn.execute(query, {"max_rows": max_rows}).fetchone()
    assert row is not None
    total, with_key, ok, categories, rows = row
    counts = Counts(total, with_key, ok, 1, 0 if ok == total else 1, dict(categories))
    counts.differences = [
        Difference(
            r["category"],
            dict(zip(identity, r["key"], strict=True)),
            {key.name: {"source": r["expected"], "target": r["actual"]}},
            1,
            1,
            f"{token.name} {r['token']}",
        )
        for r in rows
    ]
    progress(Progress("rows checked", 1, 1))
    return counts, display, display


KindFn = Callable[[Snapshot, dict[str, Any], str, int, ProgressFn], tuple[Counts, str, str]]
KINDS: dict[str, KindFn] = {
    "table": kind_table,
    "mapping": kind_mapping,
    "relocation": kind_relocation,
    "key_coverage": kind_key_coverage,
}


# ---------------------------------------------------------------- runs and verdicts


def _threshold(conn: psycopg.Connection[Any], mode: str) -> Decimal:
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "strict":
        return Decimal(1)
    return Decimal(str(get_setting(conn, "reconcile.lenient_threshold")["value"])) / 100


def _verdict(mode: str, threshold: Decimal, counts: Counts) -> tuple[Decimal, str]:
    larger = max(counts.rows_source, counts.rows_target)
    ratio = Decimal(counts.rows_matched) / larger if larger else Decimal(1)
    if any(counts.categories.get(c) for c in INVARIANTS):
        return ratio, "fail"
    if mode == "strict":
        clean = not counts.categories and counts.rows_matched == larger
        return ratio, "pass" if clean else "fail"
    return ratio, "pass" if ratio >= threshold else "fail"


def run(
    conn: psycopg.Connection[Any],
    pair: str,
    kind: str,
    spec: dict[str, Any],
    *,
    mode: str = "strict",
    max_rows: int = 100,
    progress: ProgressFn | None = None,
    helper_dsn: str | None = None,
    record: bool = True,
) -> Result:
    """Reconcile one spec in one snapshot, decide the verdict, store the run; ``conn`` must be idle."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise UsageError("reconcile needs a connection with no transaction open (it opens its own snapshot)")
    if kind not in KINDS:
        raise UsageError(f"{pair}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if max_rows < 0:
        raise UsageError(f"--max-rows must be 0 or more, got {max_rows}")
    with conn.transaction():
        require_control_schema(conn)
        threshold = _threshold(conn, mode)
    show = progress or _noop
    started = dt.datetime.now(dt.timezone.utc)
    clock = time.monotonic()
    saved = conn.isolation_level
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            _session_settings(conn)
            snap = Snapshot(conn, helper_dsn, show)
            try:
                counts, source, target = KINDS[kind](snap, spec, pair, max_rows, show)
            finally:
                snap.close()
    except psycopg.errors.DataError as exc:
        raise UsageError(
            f"{pair}: a slice or bucket value does not fit its column: {db.describe_pg_error(exc)}"
        ) from None
    finally:
        conn.isolation_level = saved
    ratio, verdict = _verdict(mode, threshold, counts)
    finished = dt.datetime.now(dt.timezone.utc)
    result = Result(
        pair, kind, source, target, mode, threshold, started, finished,
        round((time.monotonic() - clock) * 1000, 1),
        counts.rows_source, counts.rows_target, counts.rows_matched,
        counts.buckets_total, counts.buckets_mismatched, ratio, verdict,
        counts.categories, counts.differences, counts.buckets, counts.notes,
    )  # fmt: skip
    if record:
        result.run_id = _record(conn, result, spec)
    return result


def _record(conn: psycopg.Connection[Any], r: Result, spec: dict[str, Any]) -> int:
    details = {
        "kind": r.kind,
        "spec": spec,
        "categories": r.categories,
        "differences": [asdict(d) for d in r.differences],
        "buckets": r.buckets,
        "notes": r.notes,
    }
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO keyshift.reconcile_runs (pair, source, target, mode, threshold, started_at,"
            " finished_at, duration_ms, rows_source, rows_target, rows_matched, buckets_total,"
            " buckets_mismatched, match_ratio, verdict, details)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                r.pair,
                r.source,
                r.target,
                r.mode,
                r.threshold,
                r.started_at,
                r.finished_at,
                r.duration_ms,
                r.rows_source,
                r.rows_target,
                r.rows_matched,
                r.buckets_total,
                r.buckets_mismatched,
                r.match_ratio,
                r.verdict,
                Jsonb(_plain(details)),
            ),  # fmt: skip
        ).fetchone()
    assert row is not None
    return int(row[0])


def _plain(value: Any) -> Any:
    """JSON-ready: dates as ISO text, decimals as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime, Decimal)):
        return str(value)
    return value


def run_adhoc(
    conn: psycopg.Connection[Any],
    source: str,
    target: str,
    key: list[str],
    columns: list[str] | None = None,
    slices: dict[str, Any] | None = None,
    bucket_by: str | None = None,
    **options: Any,
) -> Result:
    """Compare two relations of this database (pair ``adhoc:<source>-><target>``)."""
    spec = {"source": source, "target": target, "key": key, "columns": columns, "slice": slices or {}}
    if bucket_by:
        spec["bucket_by"] = bucket_by
    return run(conn, f"adhoc:{source}->{target}", "table", spec, **options)


def pairs(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The registered pairs, by name."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        require_control_schema(conn)
        return list(
            cur.execute(
                "SELECT name, kind, spec, description, registered_by"
                " FROM keyshift.reconcile_pairs ORDER BY name"
            ).fetchall()
        )


def run_pair(conn: psycopg.Connection[Any], name: str, **options: Any) -> Result:
    """Reconcile one registered pair by name."""
    known = {p["name"]: p for p in pairs(conn)}
    if name not in known:
        raise UsageError(
            f"no registered reconcile pair {name!r}; known pairs: {', '.join(known) or 'none'} "
            "(or compare two tables with --source/--target/--key)"
        )
    pair = known[name]
    return run(conn, name, pair["kind"], pair["spec"], **options)


def run_all(conn: psycopg.Connection[Any], **options: Any) -> list[Result]:
    """Reconcile every registered pair, in name order."""
    return [run(conn, p["name"], p["kind"], p["spec"], **options) for p in pairs(conn)]


def history(conn: psycopg.Connection[Any], pair: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first (of one pair, or all)."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        require_control_schema(conn)
        return list(
            cur.execute(
                "SELECT id, pair, mode, verdict, round(match_ratio * 100, 4) AS match_percent, rows_source,"
                " rows_target, rows_matched, buckets_mismatched, buckets_total, duration_ms, started_at"
                " FROM keyshift.reconcile_runs WHERE %(pair)s::text IS NULL OR pair = %(pair)s"
                " ORDER BY id DESC LIMIT %(limit)s",
                {"pair": pair, "limit": limit},
            ).fetchall()
        )
