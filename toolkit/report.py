"""The cutover report: one self-contained HTML page for the people who sign off.

Everything comes from the control schema, read in one REPEATABLE READ
snapshot: the phase timeline from the audit log, backfill progress,
reconciliation history with per-bucket match, dead letters by reason and the
pre-flight results. The page is rendered by Jinja2 with autoescape (a reason
typed by an operator is text, never markup); charts are inline SVG whose
geometry is computed here, so the page has no script and no external asset.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import psycopg

from toolkit import control, preflight
from toolkit.errors import UsageError

TEMPLATE = "report.html.j2"
CHART_WIDTH = 640
CHART_HEIGHT = 160
PHASE_COLOURS = {"token_only": "#9e9e9e", "dual": "#1976d2", "key_primary": "#f9a825", "key_only": "#2e7d32"}

_PHASE_CHANGES = """
SELECT id, at, subject AS table, old_value AS from_phase, new_value AS to_phase, actor, reason
  FROM keyshift.audit_log WHERE action = 'phase' ORDER BY id
"""
_BACKFILL = """
SELECT table_schema || '.' || table_name AS table, status, rows_updated, rows_dead_lettered,
       rows_estimate, started_at, finished_at,
       (SELECT count(*) FROM keyshift.backfill_batches b
         WHERE b.table_schema = s.table_schema AND b.table_name = s.table_name) AS batches
  FROM keyshift.backfill_state s ORDER BY 1
"""
_RUNS = """
SELECT id, pair, source, target, mode, threshold::float8 AS threshold, started_at, finished_at,
       duration_ms::float8 AS duration_ms, rows_source, rows_target, rows_matched,
       buckets_total, buckets_mismatched, match_ratio::float8 AS match_ratio, verdict, details
  FROM keyshift.reconcile_runs ORDER BY pair, id
"""
# Reasons name the row (token, time): grouped by their shape, with one example.
_DEAD_LETTERS = """
SELECT source, kind AS reason, count(*) AS total, count(*) FILTER (WHERE resolved_at IS NULL) AS open,
       min(first_seen) AS first_seen, min(reason) AS example
  FROM (SELECT d.*, regexp_replace(regexp_replace(reason,
                 '[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9:.]+([+-][0-9:]+)?', '<time>', 'g'),
                 '[0-9]+', '<n>', 'g') AS kind
          FROM keyshift.dead_letters d) d
 GROUP BY source, kind ORDER BY open DESC, total DESC, source, kind
"""


def collect(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything the report shows, from one snapshot of the control schema (conn idle)."""
    with control.read_snapshot(conn) as revision:
        now = conn.execute("SELECT pg_catalog.now()").fetchone()
        data: dict[str, Any] = {
            "database": conn.info.dbname,
            "revision": revision,
            "generated_at": now[0] if now else None,
            "tables": control.migrated_tables(conn),
            "phase_changes": control.query_rows(conn, _PHASE_CHANGES),
            "backfill": control.query_rows(conn, _BACKFILL),
            "runs": control.query_rows(conn, _RUNS),
            "dead_letters": control.query_rows(conn, _DEAD_LETTERS),
        }
    # Pre-flight runs every check in its own READ ONLY transaction, after the snapshot.
    data["preflight"] = [dict(vars(r)) for r in preflight.run(conn, "all").results]
    return data


# ---------------------------------------------------------------- chart geometry


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    label: str


@dataclass(frozen=True)
class Segment:
    x: float
    width: float
    colour: str
    label: str


def bucket_matches(details: Mapping[str, Any] | None) -> list[tuple[str, float, bool]]:
    """(bucket, height 0..1, matched) per bucket of a run's details (toolkit.reconcile's shape).

    A bucket matches when its count and checksum agree; the height is the
    smaller side's rows over the larger side's, so a bucket with equal counts
    and a differing checksum is a full bar, in red.
    """
    buckets = (details or {}).get("buckets") or []
    out: list[tuple[str, float, bool]] = []
    for b in buckets if isinstance(buckets, list) else []:
        if not isinstance(b, Mapping):
            continue
        src, tgt = int(b.get("source_rows") or 0), int(b.get("target_rows") or 0)
        ratio = min(src, tgt) / max(src, tgt) if max(src, tgt) else 1.0
        out.append((str(b.get("bucket", "")), ratio, bool(b.get("match"))))
    return out


def ratio_bars(values: Iterable[tuple[str, float, bool]]) -> list[Bar]:
    """Vertical bars of ratios (0..1) across the chart; green where ok, red where not."""
    items = list(values)
    if not items:
        return []
    slot = CHART_WIDTH / len(items)
    width = max(1.0, slot * 0.8)
    bars = []
    for i, (label, ratio, ok) in enumerate(items):
        ratio = min(1.0, max(0.0, ratio))
        height = max(1.0, ratio * CHART_HEIGHT)
        colour = "#2e7d32" if ok else "#c62828"
        bars.append(
            Bar(round(i * slot + (slot - width) / 2, 2), round(CHART_HEIGHT - height, 2), round(width, 2),
                round(height, 2), colour, f"{label}: {ratio:.2%}")
        )  # fmt: skip
    return bars


def phase_segments(
    registered_at: dt.datetime | None,
    changes: list[Mapping[str, Any]],
    current: str,
    start: dt.datetime,
    end: dt.datetime,
) -> list[Segment]:
    """One table's phases over [start, end] as horizontal segments."""
    # A rehearsal can run in well under a second: scale to whatever span there is.
    span = max((end - start).total_seconds(), 1e-6)
    points: list[tuple[dt.datetime, str]] = []
    first = changes[0]["from_phase"] if changes else current
    points.append((registered_at or start, first))
    points.extend((c["at"], c["to_phase"]) for c in changes)
    segments = []
    for i, (at, phase) in enumerate(points):
        until = points[i + 1][0] if i + 1 < len(points) else end
        x = (max(at, start) - start).total_seconds() / span * CHART_WIDTH
        w = max(1.0, (until - max(at, start)).total_seconds() / span * CHART_WIDTH)
        segments.append(Segment(round(x, 2), round(w, 2), PHASE_COLOURS.get(phase, "#555"), phase))
    return segments


def preflight_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """One pre-flight result (toolkit.preflight.Result as a dict) in the shape the page shows.

    A check skipped because its relation is absent passed; an error-severity
    check that failed or could not run blocks.
    """
    status = str(result.get("status", ""))
    severity = str(result.get("severity", ""))
    return {
        "id": str(result.get("id", "?")),
        "severity": severity,
        "status": status,
        "passed": status in ("pass", "skipped"),
        "blocking": severity == "error" and status in ("fail", "error"),
        "violations": result.get("violations", 0),
        "summary": str(result.get("summary", "")),
    }


def view_model(data: dict[str, Any]) -> dict[str, Any]:
    """The template's inputs: the data plus chart geometry and the sign-off summary."""
    end = data["generated_at"] or dt.datetime.now(dt.timezone.utc)
    starts = [t["registered_at"] for t in data["tables"] if t.get("registered_at")]
    starts += [c["at"] for c in data["phase_changes"]]
    start = min(starts) if starts else end
    timelines = []
    for t in data["tables"]:
        name = f"{t['table_schema']}.{t['table_name']}"
        changes = [c for c in data["phase_changes"] if c["table"] == name]
        segments = phase_segments(t.get("registered_at"), changes, t["phase"], start, end)
        timelines.append({"table": name, "phase": t["phase"], "segments": segments, "changes": changes})

    pairs: dict[str, list[dict[str, Any]]] = {}
    for run in data["runs"]:
        pairs.setdefault(run["pair"], []).append(run)
    history: list[dict[str, Any]] = []
    for pair, runs in pairs.items():
        last = runs[-1]
        history.append(
            {
                "pair": pair,
                "runs": runs,
                "last": last,
                "history_bars": ratio_bars(
                    (f"run {r['id']}", r["match_ratio"], r["verdict"] == "pass") for r in runs
                ),
                "bucket_bars": ratio_bars(bucket_matches(last["details"])),
            }
        )
    open_letters = sum(d["open"] for d in data["dead_letters"])
    failing = [h["pair"] for h in history if h["last"]["verdict"] != "pass"]
    unfinished = [b["table"] for b in data["backfill"] if b["status"] != "done"]
    checks = [preflight_row(r) for r in data["preflight"]]
    preflight_errors = [r for r in checks if r["blocking"]]
    ready = not failing and not open_letters and not unfinished and not preflight_errors and bool(history)
    return {
        **data,
        "timeline_start": start,
        "timeline_end": end,
        "timelines": timelines,
        "history": history,
        "open_letters": open_letters,
        "failing_pairs": failing,
        "unfinished_backfills": unfinished,
        "preflight": checks,
        "preflight_errors": preflight_errors,
        "ready": ready,
        "phase_colours": PHASE_COLOURS,
        "chart_width": CHART_WIDTH,
        "chart_height": CHART_HEIGHT,
    }


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("toolkit", "report_templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page(model: dict[str, Any]) -> str:
    """The HTML page of a :func:`view_model`."""
    return environment().get_template(TEMPLATE).render(**model)


def write(conn: psycopg.Connection[Any], path: Path) -> dict[str, Any]:
    """Write the report to ``path``; returns the sign-off summary."""
    if not path.parent.is_dir():
        raise UsageError(f"--html {path}: directory {path.parent} does not exist; create it first")
    model = view_model(collect(conn))
    try:
        path.write_text(page(model), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--html {path}: cannot write ({exc.strerror}); check the permissions") from None
    return {k: model[k] for k in ("ready", "failing_pairs", "unfinished_backfills", "open_letters")}
