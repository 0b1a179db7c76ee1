"""Reconciliation runs: pair kinds, verdicts, the run history (``keyshift reconcile``).

A pair is ad hoc (two relations named on the command line) or registered in
``keyshift.reconcile_pairs`` by a revision: ``table`` (two relations),
``mapping`` (legacy token rows mapped to keys through the registry),
``relocation`` (a slice moved to another table, with its invariants) and
``key_coverage`` (a token table against the registry). The comparison itself
is in :mod:`toolkit.reconcile_sql`; every run is stored in
``keyshift.reconcile_runs``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from toolkit import db
from toolkit.control import get_setting, require_control_schema
from toolkit.errors import UsageError
from toolkit.reconcile_sql import (
    HASH_BUCKETS,
    INTS,
    TIME_TYPES,
    Bucketing,
    Column,
    Counts,
    Difference,
    Plan,
    Progress,
    ProgressFn,
    Side,
    Snapshot,
    canonical,
    check_bucket,
    compare,
    joined,
    noop,
    parse_bucket,
    parse_tolerances,
    relation,
    session_settings,
    table_side,
    texts,
)

__all__ = ["MODES", "Progress", "Result", "history", "pairs", "run", "run_adhoc", "run_all", "run_pair"]

MODES = ("strict", "lenient")
# Violations of a relocation's invariants fail the verdict in any mode.
INVARIANTS = ("touched_outside_slice", "live_in_both")


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
    if not spec.get("bucket_by"):
        plan.bucketing = _default_buckets(snap, plan)
    plan.tolerances = parse_tolerances(spec.get("tolerances"), pair)
    for name, (kind, _) in plan.tolerances.items():
        if name not in columns:
            raise UsageError(
                f"{pair}: tolerance on {name!r}, which is not a compared column ({', '.join(columns)})"
            )
        for side in (src, tgt):
            column = side.col(name)
            fits = column.typname in TIME_TYPES if kind == "precision" else column.category == "N"
            if not fits:
                raise UsageError(
                    f"{pair}: a {kind} tolerance does not apply to {side.relation}.{name} ({column.typname})"
                )
    check_bucket(plan)
    return plan


def _default_buckets(snap: Snapshot, plan: Plan) -> Bucketing:
    """Ranges of the first key column when it is an integer leading an index on both sides
    (the drill-down then reads only the mismatching ranges); else the key's hash."""
    first = plan.key[0]
    for side in (plan.source, plan.target):
        if side.oid is None or side.slice or side.col(first).typname not in INTS:
            return Bucketing(None, "hash")
        row = snap.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " WHERE i.indrelid = %s AND a.attname = %s AND i.indisvalid)",
            (side.oid, first),
        ).fetchone()
        if not row or not row[0]:
            return Bucketing(None, "hash")
    minmax = sql.SQL("SELECT min(t.{c}), max(t.{c}) FROM {src}")  # two index probes
    bounds = [
        snap.conn.execute(minmax.format(c=sql.Identifier(first), src=side.source)).fetchone()
        for side in (plan.source, plan.target)
    ]
    lows = [b[0] for b in bounds if b and b[0] is not None]
    highs = [b[1] for b in bounds if b and b[1] is not None]
    if not lows:
        return Bucketing(None, "hash")
    width = max(1, -(-(max(highs) - min(lows) + 1) // HASH_BUCKETS))
    return Bucketing(first, str(width))


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
    display, ident, cols, _ = relation(snap.conn, str(spec.get("source")), "source")
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
    for column in side.slice:
        side.col(column)
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
        "SELECT count(*) OVER (), {keys} AS key FROM {src} WHERE {where} ORDER BY 2 LIMIT {lim}"
    ).format(keys=texts(exprs), src=side.source, where=where, lim=sql.Placeholder("max_rows"))
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
            k=joined(plan.exprs(src, plan.key)),
            tk=joined(plan.exprs(tgt, plan.key)),
            tsrc=tgt.source,
            tw=t_where,
        )
        n, keys = _problem_rows(snap, src, names, live, {**params, **t_params}, max_rows)
        counts.add("live_in_both", n, _keyed("live_in_both", names, keys, 1))
    return counts, src.relation, tgt.relation


KEY_COVERAGE = """
WITH r AS (
    -- resolve_key's answer as a join (periods of a token never overlap, so at most one
    -- row matches): one hash join instead of a function call, and its executor, per row.
    SELECT {identity} AS key, t.{token}::text AS token, t.{key} AS actual, m.instrument_key AS expected
      FROM {src} AS t
      LEFT JOIN instrument_registry.broker_instrument_tokens AS m
        ON t.{key} IS NOT NULL
       AND m.broker = {broker} AND m.instrument_token = t.{token}
       AND m.valid_from <= COALESCE({at}, pg_catalog.now())
       AND (m.valid_to IS NULL OR m.valid_to > COALESCE({at}, pg_catalog.now()))),
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
    display, ident, cols, _ = relation(snap.conn, str(spec.get("table")), "table")
    side = Side(display, ident, cols)
    identity = _names(spec, "identity", pair) or []
    token = side.col(str(spec.get("token_column", "instrument_token")))
    key = side.col(str(spec.get("key_column", "instrument_key")))
    time_name = spec.get("time_column")
    at = _at(side.col(str(time_name)), "t") if time_name else sql.SQL("NULL::timestamptz")
    progress(Progress("rows checked", 0, 1))
    query = sql.SQL(KEY_COVERAGE).format(
        identity=texts(canonical(side.col(c)) for c in identity),
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
    show = progress or noop
    clock = time.monotonic()
    saved = conn.isolation_level
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            # The database's clock, at the start of the snapshot's transaction: a
            # guard that asks for a run started after some event (the DXY switch)
            # gets one whose snapshot saw it.
            session_settings(conn)  # first: DateStyle ISO, which the driver reads
            started = _now(conn, "now")
            snap = Snapshot(conn, helper_dsn, show)
            try:
                counts, source, target = KINDS[kind](snap, spec, pair, max_rows, show)
                finished = _now(conn, "clock_timestamp")
            finally:
                snap.close()
    except (psycopg.errors.DataError, psycopg.errors.UndefinedFunction) as exc:
        raise UsageError(
            f"{pair}: a slice or bucket value does not fit its column: {db.describe_pg_error(exc)}"
        ) from None
    finally:
        conn.isolation_level = saved
    ratio, verdict = _verdict(mode, threshold, counts)
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


def _now(conn: psycopg.Connection[Any], function: str) -> dt.datetime:
    row = conn.execute(sql.SQL("SELECT pg_catalog.{}()").format(sql.Identifier(function))).fetchone()
    assert row is not None
    return row[0]


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
    tolerances: dict[str, str] | None = None,
    **options: Any,
) -> Result:
    """Compare two relations of this database (pair ``adhoc:<source>-><target>``)."""
    spec = {"source": source, "target": target, "key": key, "columns": columns, "slice": slices or {}}
    if bucket_by:
        spec["bucket_by"] = bucket_by
    if tolerances:
        spec["tolerances"] = tolerances
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
