"""Driving a table's backfill: one in-database batch per transaction, resumable.

The work is ``keyshift.backfill__<schema>__<table>(from_block, blocks)``
(sql/templates/backfill_batch.sql.j2), which updates a range of heap blocks,
dead-letters what has no mapping and moves the checkpoint in the batch's own
transaction. This module only decides when and how big: it resumes from the
checkpoint, holds an advisory lock so two backfills of one table never run
together, adapts the batch toward a target duration, backs off while a
standby lags or sessions wait for the table, retries a batch that hit
lock_timeout (with jittered backoff) and splits one that hit
statement_timeout.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from toolkit import db
from toolkit.errors import EXIT_USAGE, KeyshiftError, UsageError
from toolkit.phases import parse_table, table_config

MAX_BLOCKS = 200_000  # 1.6 GB of heap: far above any 200 ms batch
THROTTLE_SLEEP_S = 1.0


@dataclass
class Progress:
    """What a progress display needs, from measured batches."""

    table: str
    blocks_done: int
    blocks_total: int
    rows_estimate: int
    rows_updated: int
    rows_dead_lettered: int
    elapsed_s: float
    note: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.blocks_done / self.blocks_total) if self.blocks_total else 1.0

    @property
    def rows_done(self) -> int:
        return int(self.fraction * self.rows_estimate)

    @property
    def rows_per_second(self) -> float:
        return self.rows_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.rows_per_second
        return (self.rows_estimate - self.rows_done) / rate if rate > 0 else None


@dataclass
class Result:
    table: str
    status: str  # done, paused (max runtime)
    rows_updated: int = 0
    rows_dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    batch_ms: list[float] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_updated / self.seconds if self.seconds > 0 else 0.0

    @property
    def median_batch_ms(self) -> float:
        return statistics.median(self.batch_ms) if self.batch_ms else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "status": self.status,
            "rows_updated": self.rows_updated,
            "rows_dead_lettered": self.rows_dead_lettered,
            "batches": self.batches,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "median_batch_ms": round(self.median_batch_ms, 1),
        }


@dataclass(frozen=True)
class Settings:
    batch_rows: int
    target_ms: int
    pause_ms: int
    lock_timeout: str
    statement_timeout: str
    max_retries: int
    max_lag_bytes: int

    @classmethod
    def read(cls, conn: psycopg.Connection[Any]) -> Settings:
        # Intervals as milliseconds: the form lock_timeout and statement_timeout accept.
        values = dict(
            conn.execute(
                "SELECT key, CASE WHEN kind = 'interval'"
                " THEN (extract(epoch FROM value::interval) * 1000)::bigint || 'ms' ELSE value END"
                " FROM keyshift.settings WHERE key LIKE 'backfill.%'"
            )
        )
        return cls(
            batch_rows=int(values["backfill.batch_rows"]),
            target_ms=int(values["backfill.target_batch_ms"]),
            pause_ms=int(values["backfill.pause_ms"]),
            lock_timeout=values["backfill.lock_timeout"],
            statement_timeout=values["backfill.statement_timeout"],
            max_retries=int(values["backfill.max_retries"]),
            max_lag_bytes=int(values["backfill.max_replication_lag_bytes"]),
        )


def _throttle_reason(conn: psycopg.Connection[Any], relation: str, max_lag_bytes: int) -> str | None:
    """Why the next batch should wait, or None: a lagging standby, or sessions queued on the table."""
    # One round trip: it runs before every batch.
    lag, waiting = conn.execute(
        "SELECT (SELECT COALESCE(max(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),"
        " replay_lsn)), 0) FROM pg_catalog.pg_stat_replication),"
        " (SELECT count(*) FROM pg_catalog.pg_locks WHERE NOT granted AND relation = %s::regclass)",
        (relation,),
    ).fetchone() or (0, 0)
    if lag and lag > max_lag_bytes:
        return f"standby {int(lag):,} bytes behind (limit {max_lag_bytes:,})"
    if waiting:
        return f"{waiting} session(s) waiting for a lock on {relation}"
    return None


def _record_failed_batch(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    from_block: int,
    blocks: int,
    seconds: float,
    outcome: str,
    error: str,
) -> None:
    conn.execute(
        "INSERT INTO keyshift.backfill_batches (table_schema, table_name, from_key, to_key, batch_size,"
        " duration_ms, outcome, error) VALUES (%s, %s, jsonb_build_object('block', %s::bigint),"
        " jsonb_build_object('block', %s::bigint), %s, %s, %s, %s)",
        (schema, table, from_block, from_block + blocks, blocks, round(seconds * 1000, 3), outcome, error),
    )


def _set_status(conn: psycopg.Connection[Any], schema: str, table: str, status: str) -> None:
    conn.execute(
        "UPDATE keyshift.backfill_state SET status = %s, updated_at = now(),"
        " finished_at = CASE WHEN %s = 'done' THEN now() ELSE finished_at END"
        " WHERE table_schema = %s AND table_name = %s",
        (status, status, schema, table),
    )


def run(
    dsn: str | None,
    table: str,
    *,
    batch_rows: int | None = None,
    max_runtime_s: float | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Result:
    """Backfill instrument_key on one table in phase dual, from its checkpoint to the end."""
    schema, name = parse_table(table)
    if batch_rows is not None and batch_rows < 1:
        raise UsageError(f"--batch-size must be a positive number of rows, got {batch_rows}")
    with db.connection(dsn, autocommit=True) as conn:
        config = table_config(conn, schema, name)
        if config["phase"] != "dual":
            raise KeyshiftError(
                f"{table} is in phase {config['phase']}: the backfill runs only in phase dual "
                f"(keyshift phase {table} dual)",
                EXIT_USAGE,
            )
        if conn.execute("SELECT keyshift.setting('registry.legacy_broker')").fetchone() == (None,):
            raise KeyshiftError(
                "registry.legacy_broker is not set: run keyshift registry import --broker NAME FILE.csv",
                EXIT_USAGE,
            )
        settings = Settings.read(conn)
        relation = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name)).as_string(conn)
        locked = conn.execute(
            "SELECT pg_try_advisory_lock(hashtext('keyshift.backfill'), hashtext(%s))", (relation,)
        ).fetchone()
        if not locked or not locked[0]:
            raise KeyshiftError(f"another backfill of {table} is running (it holds the advisory lock)")
        return _run_locked(conn, schema, name, relation, settings, batch_rows, max_runtime_s, progress)


def _run_locked(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    relation: str,
    settings: Settings,
    batch_rows: int | None,
    max_runtime_s: float | None,
    progress: Callable[[Progress], None] | None,
) -> Result:
    table = f"{schema}.{name}"
    function = sql.SQL("SELECT * FROM keyshift.{}(%s, %s)").format(
        sql.Identifier(f"backfill__{schema}__{name}")
    )
    with conn.cursor(row_factory=dict_row) as cur:
        state = cur.execute(
            "SELECT s.status, s.last_key, c.reltuples, c.relpages, c.relfilenode::bigint AS relfilenode,"
            " pg_relation_size(c.oid) / current_setting('block_size')::bigint AS blocks"
            " FROM keyshift.backfill_state s, pg_class c"
            " WHERE s.table_schema = %s AND s.table_name = %s AND c.oid = %s::regclass",
            (schema, name, relation),
        ).fetchone()
    assert state is not None
    last = state["last_key"] or {}
    # A pass covers the blocks the table had when it started: every row of a
    # later block was written after that, through the sync trigger (the
    # backfill's own new row versions land there too). A rewritten table
    # (VACUUM FULL, CLUSTER) has new block numbers: the pass starts over.
    resume = (
        state["status"] in ("running", "paused", "failed")
        and "block" in last
        and last.get("relfilenode") == state["relfilenode"]
    )
    from_block = int(last["block"]) if resume else 0
    blocks_total = int(last["end"]) if resume and "end" in last else max(int(state["blocks"]), 1)
    rows_per_block = (
        (state["reltuples"] / state["relpages"]) if state["relpages"] > 0 and state["reltuples"] > 0 else 50.0
    )
    rows_estimate = int(max(state["reltuples"], 0)) or int(blocks_total * rows_per_block)
    # A batch's cost follows the rows it updates more than the blocks it reads:
    # cap the blocks so that, were every row of them still without a key, the
    # batch would update at most cap_rows (the first batch size until a batch
    # has measured the update rate).
    cap_rows = float(batch_rows or settings.batch_rows)
    blocks = max(1, min(MAX_BLOCKS, int(cap_rows / rows_per_block)))
    conn.execute(
        "UPDATE keyshift.backfill_state SET status = 'running', rows_estimate = %s,"
        " started_at = COALESCE(CASE WHEN %s THEN started_at END, now()), finished_at = NULL,"
        " last_key = jsonb_build_object('block', %s::bigint, 'end', %s::bigint, 'relfilenode', %s::bigint),"
        " updated_at = now() WHERE table_schema = %s AND table_name = %s",
        (rows_estimate, bool(resume), from_block, blocks_total, state["relfilenode"], schema, name),
    )

    result = Result(table, "running")
    started = time.monotonic()
    retries_in_row = 0
    try:
        while from_block < blocks_total:
            if max_runtime_s is not None and time.monotonic() - started >= max_runtime_s:
                result.status = "paused"
                break
            reason = _throttle_reason(conn, relation, settings.max_lag_bytes)
            if reason:
                if progress:
                    progress(
                        _progress(table, from_block, blocks_total, rows_estimate, result, started, reason)
                    )
                time.sleep(THROTTLE_SLEEP_S)
                continue
            batch_started = time.monotonic()
            try:
                with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    # One round trip for the batch's settings. The commit need
                    # not wait for the WAL flush: a batch lost in a crash moved
                    # its checkpoint in the same transaction, so it is redone.
                    cur.execute(
                        "SELECT set_config('lock_timeout', %s, true),"
                        " set_config('statement_timeout', %s, true),"
                        " set_config('synchronous_commit', 'off', true)",
                        (settings.lock_timeout, settings.statement_timeout),
                    )
                    row = cur.execute(function, (from_block, blocks)).fetchone()
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                seconds = time.monotonic() - batch_started
                timed_out = isinstance(exc, psycopg.errors.QueryCanceled)
                _record_failed_batch(
                    conn,
                    schema,
                    name,
                    from_block,
                    blocks,
                    seconds,
                    "statement_timeout" if timed_out else "lock_timeout",
                    str(exc).strip(),
                )
                retries_in_row += 1
                result.retries += 1
                if retries_in_row > settings.max_retries:
                    _set_status(conn, schema, name, "failed")
                    raise KeyshiftError(
                        f"backfill of {table} stopped at block {from_block}: {retries_in_row - 1} retries "
                        f"of one batch failed ({'statement_timeout' if timed_out else 'lock_timeout'}); "
                        "see keyshift.backfill_batches, then run it again to resume"
                    ) from None
                if timed_out:
                    blocks = max(1, blocks // 2)  # split and retry at once
                else:
                    time.sleep(min(10.0, 0.2 * 2**retries_in_row) * random.uniform(0.5, 1.0))
                continue
            retries_in_row = 0
            seconds = time.monotonic() - batch_started
            assert row is not None
            result.batches += 1
            result.batch_ms.append(seconds * 1000)
            result.rows_updated += int(row["rows_updated"])
            result.rows_dead_lettered += int(row["rows_dead_lettered"])
            from_block = int(row["next_block"])
            # Aim for the target duration; change at most 2x per batch.
            ratio = settings.target_ms / max(seconds * 1000, 1.0)
            if row["rows_updated"] >= 1000:
                cap_rows = settings.target_ms * row["rows_updated"] / max(seconds * 1000, 1.0)
            cap_blocks = max(1, int(cap_rows / rows_per_block))
            blocks = max(1, min(MAX_BLOCKS, cap_blocks, int(blocks * min(2.0, max(0.5, ratio)))))
            if progress:
                progress(_progress(table, from_block, blocks_total, rows_estimate, result, started))
            if settings.pause_ms:
                time.sleep(settings.pause_ms / 1000)
        else:
            result.status = "done"
    finally:
        result.seconds = time.monotonic() - started
        if result.status in ("done", "paused"):
            _set_status(conn, schema, name, result.status)
    return result


def _progress(
    table: str, done: int, total: int, estimate: int, result: Result, started: float, note: str = ""
) -> Progress:
    return Progress(
        table,
        done,
        total,
        estimate,
        result.rows_updated,
        result.rows_dead_lettered,
        time.monotonic() - started,
        note,
    )


def tables_in_dual(dsn: str | None) -> list[str]:
    with db.connection(dsn) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM keyshift.migrated_tables"
            " WHERE phase = 'dual' ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]
