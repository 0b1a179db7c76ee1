"""Writers for load and fault scenarios: threads with their own connections, a steady rate,
and a log of what they saw committed.

Each writer runs one operation per tick in its own autocommit connection (one
operation = one transaction), times it, and records it in its log only after
the server acknowledged the commit. A scenario compares the table with the
logs afterwards: every committed write must be there, with what was written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from toolkit import migrate


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def expand_revision() -> str:
    """The revision before key_primary_contract: the whole chain except the contract."""
    down = migrate.script().get_revision("key_primary_contract").down_revision
    assert isinstance(down, str)
    return down


@dataclass
class Writer:
    """One thread writing at ``rate`` operations per second through ``step(conn, i)``."""

    dsn: str
    step: Callable[[psycopg.Connection[Any], int], None]
    rate: float
    latencies: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    ops: int = 0

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        period = 1.0 / self.rate
        try:
            with connect(self.dsn) as conn:
                next_at = time.monotonic()
                while not self.stop.is_set():
                    started = time.monotonic()
                    self.step(conn, self.ops)
                    self.latencies.append(time.monotonic() - started)
                    self.ops += 1
                    next_at += period
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        next_at = time.monotonic()  # fell behind (waited on a lock): no burst
        except BaseException as exc:  # surfaced by Load.stop
            self.errors.append(exc)


class Load:
    """Several writers started and stopped together; the figures a report needs."""

    def __init__(self, writers: list[Writer]) -> None:
        self.writers = writers
        self.started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for w in self.writers:
            w.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.writers:
            w.stop.set()
        for w in self.writers:
            w.thread.join(timeout=60)
        self.seconds = time.monotonic() - self.started

    def check(self) -> None:
        errors = [e for w in self.writers for e in w.errors]
        assert not errors, f"writers failed: {errors!r}"
        assert all(not w.thread.is_alive() for w in self.writers), "a writer is stuck"

    @property
    def ops(self) -> int:
        return sum(w.ops for w in self.writers)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def max_wait(self) -> float:
        return max((x for w in self.writers for x in w.latencies), default=0.0)


def report(scenario: str, load: Load | None, faults: str, lost: int) -> None:
    """One row of the README table (pytest -s shows it)."""
    held = (
        f"{load.rate:.0f} writes/s for {load.seconds:.0f} s (max wait {load.max_wait:.2f} s)" if load else "-"
    )
    print(f"\n| {scenario} | {held} | {faults} | {lost} |")


# ---------------------------------------------------------------- market.data_bars writers


class BarWriter:
    """Inserts, updates and deletes its own 1m bars of tokens 101-103, token only (a legacy writer).

    Its bars start at ``base`` (minutes apart, one range per writer), so they
    never collide with history or with another writer. ``committed`` maps
    (token, ts) to the volume last committed; a deleted bar leaves it.
    """

    TOKENS = (101, 102, 103)

    def __init__(self, writer_id: int, base: str = "2026-06-01 00:00:00+00") -> None:
        self.offset = writer_id * 1_000_000
        self.base = base
        self.committed: dict[tuple[int, int], int] = {}
        self.order: list[tuple[int, int]] = []

    def __call__(self, conn: psycopg.Connection[Any], i: int) -> None:
        if i % 5 == 4 and self.order:
            token, minute = self.order.pop(0)
            conn.execute(
                "DELETE FROM market.data_bars WHERE instrument_token = %s AND timeframe = '1m'"
                " AND ts = %s::timestamptz + %s * interval '1 minute'",
                (token, self.base, minute),
            )
            del self.committed[(token, minute)]
        elif i % 5 in (1, 3) and self.order:
            token, minute = self.order[-1]
            conn.execute(
                "UPDATE market.data_bars SET volume = %s WHERE instrument_token = %s AND timeframe = '1m'"
                " AND ts = %s::timestamptz + %s * interval '1 minute'",
                (i, token, self.base, minute),
            )
            self.committed[(token, minute)] = i
        else:
            token, minute = self.TOKENS[i % 3], self.offset + i
            conn.execute(
                "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close, volume)"
                " VALUES (%s, '1m', %s::timestamptz + %s * interval '1 minute', 1, 2, 0.5, 1.5, %s)",
                (token, self.base, minute, i),
            )
            self.committed[(token, minute)] = i
            self.order.append((token, minute))

    def missing(self, conn: psycopg.Connection[Any]) -> int:
        """Committed writes not in the table as written (lost, or changed by someone else)."""
        rows = conn.execute(
            "SELECT instrument_token, (extract(epoch FROM ts - %s::timestamptz) / 60)::bigint, volume"
            " FROM market.data_bars WHERE timeframe = '1m' AND ts >= %s::timestamptz + %s * interval '1 minute'"
            " AND ts < %s::timestamptz + %s * interval '1 minute'",
            (self.base, self.base, self.offset, self.base, self.offset + 1_000_000),
        ).fetchall()
        found = {(int(t), int(m)): int(v) for t, m, v in rows}
        lost = sum(1 for k, v in self.committed.items() if found.get(k) != v)
        extra = sum(1 for k in found if k not in self.committed)  # a delete that came back
        return lost + extra


# ---------------------------------------------------------------- screener.index_memberships writers


class MembershipWriter:
    """Legacy screener writes: its own memberships (index ``W<id>``) and updates of the history.

    ``committed`` maps (index, token, day offset) to the weight last committed.
    Every third operation re-weights a row of ``history`` (the rows the sync
    copies while it runs), so sync and trigger race on the same rows.
    """

    TOKENS = (101, 102, 103)

    def __init__(self, writer_id: int, history: list[tuple[str, int, int]]) -> None:
        self.index = f"W{writer_id}"
        self.history = history
        self.committed: dict[tuple[str, int, int], str] = {}
        self.order: list[tuple[str, int, int]] = []

    def __call__(self, conn: psycopg.Connection[Any], i: int) -> None:
        weight = f"0.{i + 1:06d}"
        if i % 3 == 2 and self.history:
            row = self.history[(i * 7919) % len(self.history)]
        elif i % 7 == 6 and self.order:
            row = self.order.pop(0)
            conn.execute(
                "DELETE FROM screener.index_memberships WHERE index_name = %s AND instrument_token = %s"
                " AND effective_from = date '2020-01-01' + %s",
                row,
            )
            del self.committed[row]
            return
        else:
            row = (self.index, self.TOKENS[i % 3], i)
            conn.execute(
                "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
                " VALUES (%s, %s, %s, date '2020-01-01' + %s)",
                (*row[:2], weight, row[2]),
            )
            self.committed[row] = weight
            self.order.append(row)
            return
        conn.execute(
            "UPDATE screener.index_memberships SET weight = %s WHERE index_name = %s AND instrument_token = %s"
            " AND effective_from = date '2020-01-01' + %s",
            (weight, *row),
        )
        self.committed[row] = weight

    def missing(self, conn: psycopg.Connection[Any]) -> int:
        """Committed writes whose last value is not in the legacy table."""
        rows = conn.execute(
            "SELECT index_name, instrument_token, effective_from - date '2020-01-01', weight::text"
            " FROM screener.index_memberships"
        ).fetchall()
        found = {(ix, int(t), int(d)): w for ix, t, d, w in rows}
        mine = {k for k in found if k[0] == self.index}
        lost = sum(1 for k, v in self.committed.items() if found.get(k) != v)
        return lost + len(mine - set(self.committed))


# ---------------------------------------------------------------- DXY bars through market.write_dxy_bar

DXY_START = "2026-11-01 00:00:00+00"
# The DXY bars of each side: (minute from DXY_START, close).
DXY_BARS = {
    "target": "SELECT (extract(epoch FROM ts - %s::timestamptz) / 60)::bigint, close::text"
    " FROM market.data_bars WHERE instrument_key = 'DXY_ICE_INDEX' AND timeframe = '1m'",
    "source": "SELECT (extract(epoch FROM ts - %s::timestamptz) / 60)::bigint, close::text"
    " FROM market.derived_data_bars WHERE symbol = 'DXY' AND timeframe = '1m'",
}


def dxy_bars(conn: psycopg.Connection[Any], side: str) -> dict[int, str]:
    return {int(m): c for m, c in conn.execute(DXY_BARS[side], (DXY_START,)).fetchall()}


class DxyWriter:
    """The DXY producer: new bars after the history, and corrections of historic bars, both
    through market.write_dxy_bar. ``committed`` maps a bar's minute (from DXY_START) to the
    close last committed."""

    def __init__(self, writer_id: int, history_minutes: int) -> None:
        self.writer_id = writer_id
        self.history = history_minutes
        self.committed: dict[int, str] = {}

    def __call__(self, conn: psycopg.Connection[Any], i: int) -> None:
        if i % 2:
            # Writers correct disjoint historic minutes (by writer_id modulo 4).
            minute = (i * 7919 * 4 + self.writer_id) % self.history
            minute -= minute % 4 - self.writer_id % 4
        else:
            minute = self.history + 1_000 + self.writer_id * 1_000_000 + i
        close = f"{200 + self.writer_id}.{i:06d}"
        conn.execute(
            "SELECT market.write_dxy_bar(%s::timestamptz + %s * interval '1 minute', %s::numeric,"
            " %s::numeric + 1, %s::numeric - 1, %s::numeric, %s)",
            (DXY_START, minute, close, close, close, close, i),
        )
        self.committed[minute] = close

    def missing(self, conn: psycopg.Connection[Any]) -> int:
        """Committed bars whose last close is not what data_bars holds."""
        found = dxy_bars(conn, "target")
        return sum(1 for m, c in self.committed.items() if found.get(m) != c)
