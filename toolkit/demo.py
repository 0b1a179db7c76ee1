"""`keyshift demo`: the whole mission, step by step, on a generated legacy database.

The demo runs in a scratch database it creates and drops (unless --keep) on
the configured server, or on a throwaway embedded server (toolkit.embedded)
when nothing is configured. Each step is one small function over a
:class:`Context`, listed in :data:`STEPS` with the modules it needs: a step
whose module this keyshift does not have is reported "skipped: not available"
and, since skipped is not passed, makes the demo exit 1. Wiring a new step is
a function and one line in STEPS.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from toolkit import (
    backfill,
    db,
    demo_data,
    embedded,
    memberships,
    migrate,
    phases,
    preflight,
    reconcile,
    registry,
    relocation,
)
from toolkit.errors import EXIT_FAIL, KeyshiftError, UsageError
from toolkit.report import preflight_row

REASON = "keyshift demo"
CONTRACT = "key_primary_contract"


class VerdictFailed(KeyshiftError):
    """A step ran and its check did not pass."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAIL)


@dataclass
class Context:
    """What the steps share: the scratch database, the dataset plan and measured figures."""

    dsn: str
    plan: demo_data.Plan
    workdir: Path
    figures: dict[str, Any] = field(default_factory=dict)

    def connect(self) -> psycopg.Connection[Any]:
        return db.connect(self.dsn, autocommit=True)

    def scalar(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        with self.connect() as conn:
            row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise VerdictFailed(message)


# ---------------------------------------------------------------- the steps


def step_legacy(ctx: Context) -> dict[str, Any]:
    """The legacy schema (revision legacy_baseline) and its rows."""
    migrate.upgrade(ctx.dsn, "legacy_baseline")
    with ctx.connect() as conn:
        counts = demo_data.load(conn, ctx.plan)
    return {"bars": counts["market.data_bars"], "dxy_bars": counts["market.derived_data_bars"],
            "subscriptions": counts["market.subscriptions"], "positions": counts["trading.positions"],
            "memberships": counts["screener.index_memberships"]}  # fmt: skip


def step_upgrade(ctx: Context) -> dict[str, Any]:
    """Every revision before the contract (which needs every row keyed first)."""
    before = migrate.script().get_revision(CONTRACT).down_revision
    assert isinstance(before, str)
    migrate.upgrade(ctx.dsn, before)
    with ctx.connect() as conn:
        return {"revision": migrate.current_revision(conn)}


def step_preflight(ctx: Context) -> dict[str, Any]:
    """The pre-flight checks of the backfill: none may block."""
    with ctx.connect() as conn:
        report = preflight.run(conn, "backfill")
    rows = [preflight_row(vars(r)) for r in report.results]
    blocking = [r["id"] for r in rows if r["blocking"]]
    expect(not blocking, f"pre-flight errors: {', '.join(blocking)}")
    return {"checks": len(rows), "passed": sum(1 for r in rows if r["passed"]),
            "warnings": sum(1 for r in rows if not r["passed"] and not r["blocking"])}  # fmt: skip


def step_registry(ctx: Context) -> dict[str, Any]:
    """Two broker dumps: before and after the broker gave the future's token to the next contract."""
    before, after = demo_data.write_dumps(ctx.plan, ctx.workdir)
    first = registry.import_dump(ctx.dsn, before, demo_data.BROKER)
    second = registry.import_dump(ctx.dsn, after, demo_data.BROKER, as_of=ctx.plan.reuse_at)
    expect(second["mappings_closed"] == 1, f"expected the reused token to move, got {second}")
    return {"instruments": first["instruments_new"] + second["instruments_new"],
            "mappings": first["mappings_opened"] + second["mappings_opened"],
            "tokens_reused": second["mappings_closed"]}  # fmt: skip


def step_backfill(ctx: Context) -> dict[str, Any]:
    """Every table in dual, while a writer keeps inserting bars through the sync trigger."""
    stop, written, errors = threading.Event(), [0], []

    def writer() -> None:
        try:
            with ctx.connect() as conn:
                minute = 0
                while not stop.is_set():
                    written[0] += demo_data.write_bars(conn, ctx.plan, minute)
                    minute += 1
                    time.sleep(0.005)
        except Exception as exc:  # reported as the step's failure below
            errors.append(exc)

    thread = threading.Thread(target=writer, name="demo-writer", daemon=True)
    thread.start()
    results = []
    try:
        for table in backfill.tables_in_dual(ctx.dsn):
            results.append(backfill.run(ctx.dsn, table))
    finally:
        stop.set()
        thread.join()
    expect(not errors, f"the concurrent writer failed: {errors[0] if errors else ''}")
    rows = sum(r.rows_updated for r in results)
    seconds = sum(r.seconds for r in results)
    ctx.figures.update(rows_migrated=rows, backfill_seconds=seconds)
    later = ctx.scalar(
        "SELECT count(*) FILTER (WHERE instrument_key IS NOT NULL) FROM market.data_bars WHERE ts >= %s",
        (ctx.plan.end,),
    )
    missing = ctx.scalar(
        "SELECT (SELECT count(*) FROM market.data_bars WHERE instrument_key IS NULL)"
        " + (SELECT count(*) FROM market.subscriptions WHERE instrument_key IS NULL)"
        " + (SELECT count(*) FROM trading.positions WHERE instrument_key IS NULL)"
    )
    expect(later == written[0], f"writer committed {written[0]} bars, {later} are there with a key")
    expect(missing == 0, f"{missing} rows still have no instrument_key")
    split = _reused_token_split(ctx)
    expect(split == {demo_data.OLD_CONTRACT: ctx.plan.minutes // 2,
                     demo_data.NEW_CONTRACT: ctx.plan.minutes - ctx.plan.minutes // 2},
           f"bars of the reused token resolved as {split}")  # fmt: skip
    return {"rows": rows, "rows_per_s": round(rows / seconds) if seconds else 0,
            "writer_rows": written[0], "dead_lettered": sum(r.rows_dead_lettered for r in results),
            **{f"reused_token_{k}": v for k, v in split.items()}}  # fmt: skip


def _reused_token_split(ctx: Context) -> dict[str, int]:
    with ctx.connect() as conn:
        rows = conn.execute(
            "SELECT split_part(instrument_key, '_', 1), count(*) FROM market.data_bars"
            " WHERE instrument_token = %s GROUP BY 1",
            (demo_data.REUSED_TOKEN,),
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def _reconcile(ctx: Context, kinds: tuple[str, ...] | None) -> dict[str, Any]:
    """Registered pairs of these kinds, or all of them: each verdict must pass."""
    with ctx.connect() as conn:
        names = [p["name"] for p in reconcile.pairs(conn) if kinds is None or p["kind"] in kinds]
        results = [reconcile.run_pair(conn, name) for name in names]
    verdicts = {r.pair: r.verdict for r in results}
    failed = sorted(p for p, v in verdicts.items() if v != "pass")
    expect(bool(verdicts), f"no reconciliation pair of kind {', '.join(kinds or ('any',))} is registered")
    expect(not failed, f"reconciliation failed: {', '.join(failed)}")
    rows = sum(r.rows_source for r in results)
    return {"pairs": len(verdicts), "passed": len(verdicts) - len(failed), "rows_compared": rows}


def step_reconcile_keys(ctx: Context) -> dict[str, Any]:
    """After the backfill: every token table's rows have the key the registry gives their token."""
    return _reconcile(ctx, ("key_coverage",))


def step_reconcile_relocation(ctx: Context) -> dict[str, Any]:
    """After the reader switch: the relocated DXY slice equals its source (the cleanup guard's input)."""
    return _reconcile(ctx, ("relocation",))


def step_reconcile_all(ctx: Context) -> dict[str, Any]:
    """Every registered pair (key coverage, memberships mapping, DXY relocation)."""
    return _reconcile(ctx, None)


def step_phase(ctx: Context) -> dict[str, Any]:
    """data_bars and subscriptions to key_primary online, one `keyshift phase` each."""
    out = {}
    for table in ("market.data_bars", "market.subscriptions"):
        result = phases.change_phase(ctx.dsn, table, "key_primary", REASON)
        expect(result.get("phase") == "key_primary", f"{table} is in phase {result.get('phase')}")
        out[table.split(".")[1]] = f"{result['from']}->{result['phase']}"
    return out


def step_head(ctx: Context) -> dict[str, Any]:
    """The contract revision: the remaining table (positions) moves; the others stay as they are."""
    migrate.upgrade(ctx.dsn, "head")
    with ctx.connect() as conn:
        phases_now = dict(conn.execute("SELECT table_name, phase FROM keyshift.migrated_tables").fetchall())
        revision = migrate.current_revision(conn)
    expect(set(phases_now.values()) == {"key_primary"}, f"phases after head: {phases_now}")
    return {"revision": revision, "tables_key_primary": len(phases_now)}


def step_memberships(ctx: Context) -> dict[str, Any]:
    """The initial copy, then legacy writes reaching the registry in their own transaction."""
    synced = memberships.sync(ctx.dsn)
    new_member = ctx.plan.tokens[-2]
    with ctx.connect() as conn, conn.transaction():
        conn.execute(
            "UPDATE screener.index_memberships SET weight = weight * 2 WHERE instrument_token = %s",
            (ctx.plan.tokens[0],),
        )
        conn.execute(
            "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
            " VALUES ('NIFTYNEXT50', %s, 0.02, DATE '2026-01-01')",
            (new_member,),
        )
    with ctx.connect() as conn:
        counts = memberships.counts(conn)
        mirrored = conn.execute(
            "SELECT count(*) FROM instrument_registry.index_memberships WHERE index_name = 'NIFTYNEXT50'"
        ).fetchone()
    expect(counts["legacy_rows"] == counts["registry_rows"], f"memberships differ: {counts}")
    expect(mirrored == (1,), "the dual-write did not reach the registry")
    expect(counts["open_dead_letters"] == 0, f"{counts['open_dead_letters']} memberships dead-lettered")
    return {"copied": synced["rows_applied"], "legacy_rows": counts["legacy_rows"],
            "registry_rows": counts["registry_rows"], "dual_writes": 2}  # fmt: skip


def step_dxy(ctx: Context) -> dict[str, Any]:
    """DXY 1m bars: batched copy (per-day counts compared), reader switch, health."""
    copied = relocation.copy(ctx.dsn, "dxy", reason=REASON)
    expect(not copied["mismatched_days"], f"DXY days differ after the copy: {copied['mismatched_days']}")
    switched = relocation.switch(ctx.dsn, "dxy", REASON)
    health = relocation.health(ctx.dsn, "dxy")
    bad = [c["check"] for c in health["checks"] if not c["ok"]]
    expect(health["ok"], f"DXY health failed: {', '.join(bad)}")
    return {"copied": copied["rows_inserted"], "days_checked": copied["days_checked"],
            "switched_rows": switched["rows"], "health_checks": len(health["checks"])}  # fmt: skip


def step_dxy_cleanup_refused(ctx: Context) -> dict[str, Any]:
    """Cleanup of the old DXY rows is refused inside the soak window, even after a passing
    reconciliation (the guard's other condition), and changes nothing."""
    source = "SELECT count(*) FROM market.derived_data_bars WHERE symbol = 'DXY' AND timeframe = '1m'"
    before = ctx.scalar(source)
    try:
        relocation.cleanup(ctx.dsn, "dxy", reason=REASON)
    except (KeyshiftError, psycopg.Error) as exc:
        refusal = exc.message if isinstance(exc, KeyshiftError) else db.describe_pg_error(exc)
    else:
        raise VerdictFailed("cleanup ran inside the soak window")
    expect(ctx.scalar(source) == before, "the refused cleanup changed the source rows")
    expect("soak" in refusal, f"cleanup refused for another reason: {refusal}")
    return {"refused": refusal.split(";")[0], "source_rows_kept": before}


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Context], dict[str, Any]] | None
    needs: tuple[str, ...] = ()  # modules this step calls; absent = "skipped: not available"

    def available(self) -> bool:
        if self.run is None:
            return False
        return all(importlib.util.find_spec(m) is not None for m in self.needs)


STEPS: tuple[Step, ...] = (
    Step("legacy database", step_legacy),
    Step("upgrade (revisions before the contract)", step_upgrade),
    Step("registry import", step_registry),
    Step("pre-flight", step_preflight),
    Step("backfill with a concurrent writer", step_backfill),
    Step("reconciliation of the keys", step_reconcile_keys),
    Step("phase change to key_primary", step_phase),
    Step("upgrade to head", step_head),
    Step("memberships sync and dual-write", step_memberships),
    Step("DXY copy, switch, health", step_dxy),
    Step("reconciliation of the DXY relocation", step_reconcile_relocation),
    Step("DXY cleanup refused inside the soak window", step_dxy_cleanup_refused),
    Step("final reconciliation", step_reconcile_all),
)


# ---------------------------------------------------------------- running


STATUSES = ("passed", "failed", "skipped", "not run")


@dataclass
class Outcome:
    step: str
    status: str  # passed, failed, skipped, not run
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def run_steps(ctx: Context, steps: tuple[Step, ...], echo: Callable[[str], None]) -> list[Outcome]:
    """Run the steps in order; after a failure the rest are not run (they build on it)."""
    outcomes: list[Outcome] = []
    failed = False
    for i, step in enumerate(steps, 1):
        head = f"[{i}/{len(steps)}] {step.name}"
        if failed:
            outcomes.append(Outcome(step.name, "not run"))
            continue
        if not step.available():
            outcomes.append(Outcome(step.name, "skipped", note="not available"))
            echo(f"{head}: skipped: not available")
            continue
        assert step.run is not None
        started = time.monotonic()
        try:
            counts = step.run(ctx)
            outcome = Outcome(step.name, "passed", counts=counts)
        except (KeyshiftError, psycopg.Error) as exc:
            note = exc.message if isinstance(exc, KeyshiftError) else db.describe_pg_error(exc)
            outcome, failed = Outcome(step.name, "failed", note=note), True
        outcome.seconds = time.monotonic() - started
        outcomes.append(outcome)
        items = outcome.counts.items()
        detail = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in items)
        echo(f"{head}: {outcome.status} in {outcome.seconds:.1f} s: {detail or outcome.note}")
    return outcomes


def summary(ctx: Context, outcomes: list[Outcome]) -> dict[str, Any]:
    """The figures the demo ends with, read from the scratch database."""
    verdicts: dict[str, str] = {}
    letters = None
    with ctx.connect() as conn:
        if conn.execute("SELECT to_regclass('keyshift.reconcile_runs') IS NOT NULL").fetchone() == (True,):
            verdicts = dict(
                conn.execute(
                    "SELECT DISTINCT ON (pair) pair, verdict FROM keyshift.reconcile_runs"
                    " ORDER BY pair, id DESC"
                ).fetchall()
            )
            letters = conn.execute(
                "SELECT count(*) FROM keyshift.dead_letters WHERE resolved_at IS NULL"
            ).fetchone()
    rows = ctx.figures.get("rows_migrated", 0)
    seconds = ctx.figures.get("backfill_seconds", 0.0)
    return {
        "rows_migrated": rows,
        "rows_per_second": round(rows / seconds) if seconds else 0,
        "reconciliation": verdicts,
        "open_dead_letters": letters[0] if letters else 0,
        "steps": {s: sum(1 for o in outcomes if o.status == s) for s in STATUSES},
        "passed": all(o.status == "passed" for o in outcomes),
    }


def run(
    dsn: str | None, rows: int, keep: bool, echo: Callable[[str], None], steps: tuple[Step, ...] = STEPS
) -> tuple[list[Outcome], dict[str, Any]]:
    """The demo on the configured server, or on an embedded one; returns outcomes and summary."""
    if rows < 100:
        raise UsageError(f"--rows {rows}: use at least 100 rows")
    configured = db.is_configured(dsn)
    if keep and not configured:
        raise UsageError(
            "--keep needs a server (--dsn or DATABASE_URL): the embedded server is removed at exit"
        )
    with contextlib.ExitStack() as stack:
        stack.enter_context(embedded.sigterm_as_exit())
        if configured:
            server = db.resolve_dsn(dsn)
        else:
            echo("no database configured: starting an embedded Postgres from the local binaries")
            server = stack.enter_context(embedded.server())
        target = stack.enter_context(embedded.scratch_database(server, keep, echo))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=embedded.temp_prefix())))
        ctx = Context(target, demo_data.plan(rows), workdir)
        echo(f"demo database {db.describe_target(target)}, {ctx.plan.rows:,} legacy bars")
        outcomes = run_steps(ctx, steps, echo)
        return outcomes, summary(ctx, outcomes)
    raise AssertionError("unreachable")
