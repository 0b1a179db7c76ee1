"""Slice relocations (``keyshift relocate``): drive the SQL the relocation templates install.

The steps live in the database (keyshift.relocations, keyshift.flow_state)
and in plpgsql functions rendered from sql/templates/relocation.sql.j2; these
functions call them one transaction per batch and report counts, so a killed
run resumes where it stopped and every rule holds for any client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from toolkit import db, migrate, preflight
from toolkit.control import require_control_schema
from toolkit.errors import UsageError


@dataclass(frozen=True)
class Relocation:
    """A relocation the CLI knows by a short name, and what its health checks read."""

    name: str  # keyshift.relocations.name and the reconcile pair's name
    revision: str  # the revision that installs it
    settings: str  # prefix of its settings: <prefix>.batch_size, .max_staleness
    preflight_step: str  # the pre-flight step whose checks gate the copy
    symbol: str  # the slice in derived_data_bars and in the reader view (column symbol)
    instrument_key: str  # the slice in data_bars
    derived_timeframes: tuple[tuple[str, str], ...]  # (timeframe, its period as an interval)


RELOCATIONS = {
    "dxy": Relocation(
        name="dxy_1m_bars",
        revision="dxy_relocation",
        settings="dxy",
        preflight_step="dxy_copy",
        symbol="DXY",
        instrument_key="DXY_ICE_INDEX",
        derived_timeframes=(("5m", "5 minutes"), ("1h", "1 hour")),
    ),
}


def lookup(which: str) -> Relocation:
    try:
        return RELOCATIONS[which]
    except KeyError:
        raise UsageError(f"no relocation {which!r}; known: {', '.join(sorted(RELOCATIONS))}") from None


def _fn_name(rel: Relocation, kind: str) -> str:
    return f"relocation_{kind}__{rel.name}"


def _fn(rel: Relocation, kind: str) -> sql.Composed:
    return sql.SQL("keyshift.{}").format(sql.Identifier(_fn_name(rel, kind)))


def _one(conn: psycopg.Connection[Any], query: Any, params: tuple[Any, ...] = ()) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, params).fetchone()
    assert row is not None
    return dict(row)


def _setting(conn: psycopg.Connection[Any], key: str) -> str:
    return str(_one(conn, "SELECT keyshift.setting(%s) AS v", (key,))["v"])


def _require(conn: psycopg.Connection[Any], rel: Relocation) -> dict[str, Any]:
    require_control_schema(conn)
    migrate.require_revision(conn, rel.revision)
    return _one(conn, "SELECT * FROM keyshift.relocations WHERE name = %s", (rel.name,))


def _batch_size(conn: psycopg.Connection[Any], rel: Relocation, given: int | None) -> int:
    if given is not None and given < 1:
        raise UsageError(f"--batch-size must be a positive number of rows, got {given}")
    return given or int(_setting(conn, f"{rel.settings}.batch_size"))


def _reason(reason: str, what: str) -> str:
    if not reason or not reason.strip():
        raise UsageError(f"{what} needs a reason: --reason TEXT")
    return reason


def counts(conn: psycopg.Connection[Any], rel: Relocation) -> dict[str, Any]:
    return _one(
        conn,
        "SELECT count(*) AS source_rows, count(relocated_at) AS source_marked,"
        " (SELECT count(*) FROM market.data_bars"
        "   WHERE instrument_key = %s AND timeframe = '1m') AS target_rows"
        " FROM market.derived_data_bars WHERE symbol = %s AND timeframe = '1m'",
        (rel.instrument_key, rel.symbol),
    )


def plan(dsn: str | None, which: str) -> dict[str, Any]:
    """Where the relocation stands and the step that comes next; changes nothing."""
    rel = lookup(which)
    with db.connection(dsn, autocommit=True) as conn:
        state = _require(conn, rel)
        out = {"relocation": rel.name, "step": state["step"], **counts(conn, rel)}
        out["days"] = _one(
            conn,
            "SELECT count(DISTINCT (ts AT TIME ZONE 'UTC')::date) AS n, min(ts) AS first, max(ts) AS last"
            " FROM market.derived_data_bars WHERE symbol = %s AND timeframe = '1m'",
            (rel.symbol,),
        )
    out["next"] = {
        "installed": "copy",
        "rolled_back": "copy",
        "copying": "copy (resumes)",
        "copied": "switch",
        "switched": "health, reconcile, then cleanup after the soak window",
        "cleaning": "cleanup (resumes)",
        "cleaned": "purge",
        "purging": "purge (resumes)",
        "purged": "nothing: done",
    }[state["step"]]
    return out


def copy(dsn: str | None, which: str, batch_size: int | None = None, reason: str = "copy") -> dict[str, Any]:
    """Copy the slice in batches (resumable), comparing per-day counts as it goes."""
    rel = lookup(which)
    started = time.monotonic()
    with db.connection(dsn, autocommit=True) as conn:
        _require(conn, rel)
        checks = [r.id for r in preflight.require(conn, rel.preflight_step).results]
        limit = _batch_size(conn, rel, batch_size)
        with conn.transaction():
            mode = _one(conn, sql.SQL("SELECT {}(%s) AS m").format(_fn(rel, "copy_start")), (reason,))["m"]
        totals = {"batches": 0, "rows_read": 0, "rows_inserted": 0, "days_checked": 0}
        while True:
            with conn.transaction():
                row = _one(conn, sql.SQL("SELECT * FROM {}(%s)").format(_fn(rel, "copy_batch")), (limit,))
            totals["batches"] += 1
            for key in ("rows_read", "rows_inserted", "days_checked"):
                totals[key] += int(row[key])
            if row["done"]:
                break
        flow = _one(
            conn, "SELECT * FROM keyshift.flow_state WHERE flow = %s", (f"relocation.{rel.name}.copy",)
        )
        state = _one(conn, "SELECT step FROM keyshift.relocations WHERE name = %s", (rel.name,))
        result: dict[str, Any] = {
            "relocation": rel.name,
            "resumed": mode == "resumed",
            "preflight": checks,
            **totals,
            "rows_copied_this_pass": int(flow["rows_done"]),
            "mismatched_days": flow["details"].get("mismatched_days", {}),
            "status": flow["status"],
            "step": state["step"],
            **counts(conn, rel),
        }
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _view_change(conn: psycopg.Connection[Any], rel: Relocation, kind: str, reason: str) -> dict[str, Any]:
    """Call the switch or rollback function: one transaction that replaces the reader view."""
    with conn.transaction():
        # The view's ACCESS EXCLUSIVE lock waits for running readers; a short
        # lock_timeout keeps new readers from queueing behind it for long.
        conn.execute("SET LOCAL lock_timeout = '5s'")
        return _one(conn, sql.SQL("SELECT * FROM {}(%s)").format(_fn(rel, kind)), (reason,))


def switch(dsn: str | None, which: str, reason: str) -> dict[str, Any]:
    """Readers to the target, in the transaction that records it (refused unless every day matches)."""
    rel = lookup(which)
    with db.connection(dsn, autocommit=True) as conn:
        _require(conn, rel)
        rows = _view_change(conn, rel, "switch", _reason(reason, "switch"))
        state = _one(conn, "SELECT step, switched_at FROM keyshift.relocations WHERE name = %s", (rel.name,))
        soak = _setting(conn, _require(conn, rel)["soak_setting"])
    return {"relocation": rel.name, "rows": int(rows[_fn_name(rel, "switch")]), **state, "soak_window": soak}


def _keyset_batches(
    conn: psycopg.Connection[Any], rel: Relocation, kind: str, limit: int, summed: tuple[str, ...]
) -> dict[str, int]:
    """Call a batch function (p_after, p_limit) one transaction at a time until it returns no key."""
    totals = dict.fromkeys(("batches", *summed), 0)
    cursor = None
    while True:
        with conn.transaction():
            row = _one(conn, sql.SQL("SELECT * FROM {}(%s, %s)").format(_fn(rel, kind)), (cursor, limit))
        if row["last_key"] is None:
            return totals
        totals["batches"] += 1
        for key in summed:
            totals[key] += int(row[key])
        cursor = row["last_key"]


def cleanup(
    dsn: str | None,
    which: str,
    *,
    force: bool = False,
    reason: str = "cleanup",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """After the soak window and a passing reconciliation: mark (soft-delete) the source rows, in batches."""
    rel = lookup(which)
    if force:
        _reason(reason, "--force")
    with db.connection(dsn, autocommit=True) as conn:
        _require(conn, rel)
        limit = _batch_size(conn, rel, batch_size)
        with conn.transaction():
            start = _one(
                conn, sql.SQL("SELECT {}(%s, %s) AS s").format(_fn(rel, "cleanup_start")), (force, reason)
            )["s"]
        totals = _keyset_batches(conn, rel, "cleanup_batch", limit, ("rows_marked",))
        state = _one(conn, "SELECT step, cleaned_at FROM keyshift.relocations WHERE name = %s", (rel.name,))
        return {
            "relocation": rel.name,
            **start,
            **totals,
            **state,
            **counts(conn, rel),
        }


def purge(
    dsn: str | None, which: str, *, reason: str = "purge", batch_size: int | None = None
) -> dict[str, Any]:
    """Delete the marked source rows in batches, each only where the target holds the row."""
    rel = lookup(which)
    with db.connection(dsn, autocommit=True) as conn:
        _require(conn, rel)
        limit = _batch_size(conn, rel, batch_size)
        with conn.transaction():
            resumed = _one(conn, sql.SQL("SELECT {}(%s) AS r").format(_fn(rel, "purge_start")), (reason,))[
                "r"
            ]
        totals = _keyset_batches(conn, rel, "purge_batch", limit, ("rows_deleted", "rows_kept"))
        state = _one(conn, "SELECT step, purged_at FROM keyshift.relocations WHERE name = %s", (rel.name,))
        return {
            "relocation": rel.name,
            "resumed": resumed,
            "rows_deleted": totals["rows_deleted"],
            "rows_dead_lettered": totals["rows_kept"],
            "batches": totals["batches"],
            **state,
            **counts(conn, rel),
        }


def rollback(dsn: str | None, which: str, reason: str) -> dict[str, Any]:
    """Readers back to the source, the target's rows of the slice with them; refused once purging."""
    rel = lookup(which)
    with db.connection(dsn, autocommit=True) as conn:
        _require(conn, rel)
        row = _view_change(conn, rel, "rollback", _reason(reason, "rollback"))
        return {"relocation": rel.name, **row, "step": "rolled_back", **counts(conn, rel)}


def health(dsn: str | None, which: str) -> dict[str, Any]:
    """Freshness of the 1m bars readers see, aggregates advancing, no duplicate keys; recorded."""
    rel = lookup(which)
    with db.connection(dsn, autocommit=True) as conn:
        _require(conn, rel)
        staleness = _setting(conn, f"{rel.settings}.max_staleness")
        checks: list[dict[str, Any]] = []
        fresh = _one(
            conn,
            "SELECT max(ts) AS newest, now() - max(ts) AS age, (now() - max(ts)) <= %s::interval AS ok"
            " FROM market.bars_1m WHERE symbol = %s",
            (staleness, rel.symbol),
        )
        checks.append(
            {
                "check": "newest_1m_bar",
                "ok": bool(fresh["ok"]),
                "newest": fresh["newest"],
                "age": fresh["age"],
                "limit": staleness,
            }
        )
        for timeframe, period in rel.derived_timeframes:
            agg = _one(
                conn,
                "SELECT max(ts) AS newest, now() - max(ts) AS age,"
                " (now() - max(ts)) <= %s::interval + %s::interval AS ok FROM ("
                "  SELECT ts FROM market.derived_data_bars WHERE symbol = %s AND timeframe = %s"
                "  UNION ALL SELECT ts FROM market.data_bars WHERE instrument_key = %s AND timeframe = %s) b",
                (period, staleness, rel.symbol, timeframe, rel.instrument_key, timeframe),
            )
            checks.append(
                {
                    "check": f"aggregate_{timeframe}_advances",
                    "ok": bool(agg["ok"]),
                    "newest": agg["newest"],
                    "age": agg["age"],
                    "limit": f"{period} + {staleness}",
                }
            )
        dups = _one(
            conn,
            "SELECT count(*) AS n FROM (SELECT 1 FROM market.data_bars WHERE instrument_key = %s"
            " GROUP BY instrument_key, timeframe, ts HAVING count(*) > 1) d",
            (rel.instrument_key,),
        )
        seen_twice = _one(
            conn,
            "SELECT count(*) AS n FROM (SELECT 1 FROM market.bars_1m WHERE symbol = %s"
            " AND ts > now() - interval '2 days' GROUP BY ts HAVING count(*) > 1) d",
            (rel.symbol,),
        )
        checks.append(
            {
                "check": "no_duplicate_keys",
                "ok": dups["n"] == 0 and seen_twice["n"] == 0,
                "duplicate_keys": dups["n"],
                "bars_seen_twice_by_readers": seen_twice["n"],
            }
        )
        ok = all(c["ok"] for c in checks)
        conn.execute(
            "INSERT INTO keyshift.flow_state (flow, status, details, finished_at) VALUES (%s, %s, %s, now())"
            " ON CONFLICT (flow) DO UPDATE SET status = excluded.status, details = excluded.details,"
            " finished_at = excluded.finished_at, updated_at = now()",
            (
                f"relocation.{rel.name}.health",
                "done" if ok else "failed",
                psycopg.types.json.Jsonb({c["check"]: c["ok"] for c in checks}),
            ),
        )
    return {"relocation": rel.name, "ok": ok, "checks": checks}


def status(dsn: str | None, which: str) -> dict[str, Any]:
    """The step, the soak time left, the copy's progress and the last reconciliation and health results."""
    rel = lookup(which)
    with db.connection(dsn, autocommit=True) as conn:
        state = _require(conn, rel)
        soak = _setting(conn, state["soak_setting"])
        left = _one(
            conn,
            "SELECT CASE WHEN %s::timestamptz IS NULL THEN NULL"
            " ELSE greatest(%s::timestamptz + %s::interval - now(), interval '0') END AS left",
            (state["switched_at"], state["switched_at"], soak),
        )["left"]
        flows = {
            r["flow"].rsplit(".", 1)[1]: r
            for r in conn.cursor(row_factory=dict_row).execute(
                "SELECT flow, status, rows_done, last_key, updated_at, details FROM keyshift.flow_state"
                " WHERE flow IN (%s, %s)",
                (f"relocation.{rel.name}.copy", f"relocation.{rel.name}.health"),
            )
        }
        with conn.cursor(row_factory=dict_row) as cur:
            run = cur.execute(
                "SELECT id, started_at, verdict, buckets_mismatched, buckets_total"
                " FROM keyshift.reconcile_runs WHERE pair = %s ORDER BY id DESC LIMIT 1",
                (rel.name,),
            ).fetchone()
        return {
            "relocation": rel.name,
            "step": state["step"],
            "switched_at": state["switched_at"],
            "soak_window": soak,
            "soak_left": left,
            "cleaned_at": state["cleaned_at"],
            "purged_at": state["purged_at"],
            "copy": flows.get("copy"),
            "last_health": flows.get("health"),
            "last_reconcile": dict(run) if run else None,
            **counts(conn, rel),
        }
