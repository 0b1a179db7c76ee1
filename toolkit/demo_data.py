"""A realistic legacy trading database for `keyshift demo`, generated in SQL.

Instruments come from broker-style CSV dumps (zerodha's column layout), one
futures token is reused by the broker for the next contract half-way through
the bars, and the legacy tables get minute bars, subscriptions, positions,
index memberships and several days of DXY 1m bars in derived_data_bars. Bulk
rows are made by ``generate_series`` on the server: 200,000 bars take well
under a second and never travel through Python.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

BROKER = "zerodha"
START = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
EQUITIES = (
    "RELIANCE TCS HDFCBANK INFY ICICIBANK HINDUNILVR ITC SBIN BHARTIARTL KOTAKBANK LT AXISBANK "
    "ASIANPAINT MARUTI SUNPHARMA TITAN ULTRACEMCO BAJFINANCE WIPRO NESTLEIND M&M BAJAJ-AUTO HCLTECH "
    "POWERGRID NTPC ONGC TATASTEEL JSWSTEEL ADANIPORTS COALINDIA"
).split()
# Token of the front-month future: the broker gives it to the next contract at expiry.
REUSED_TOKEN = 13_100_001
OLD_CONTRACT, NEW_CONTRACT = "NIFTY26JANFUT", "NIFTY26FEBFUT"
DXY_DAYS = 3
CSV_HEADER = ("instrument_token", "exchange_token", "tradingsymbol", "name", "expiry", "tick_size",
              "lot_size", "instrument_type", "segment", "exchange")  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What the dataset holds; the demo's steps read their expectations from here."""

    rows: int
    tokens: tuple[int, ...]
    minutes: int  # bars per instrument
    start: dt.datetime
    reuse_at: dt.datetime  # when REUSED_TOKEN moves from OLD_CONTRACT to NEW_CONTRACT

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(minutes=self.minutes)


def plan(rows: int) -> Plan:
    tokens = tuple(range(408_065, 408_065 + len(EQUITIES))) + (REUSED_TOKEN,)
    minutes = max(1, rows // len(tokens))
    reuse_at = START + dt.timedelta(minutes=minutes // 2)
    return Plan(minutes * len(tokens), tokens, minutes, START, reuse_at)


def _lines(p: Plan, future: str) -> list[dict[str, Any]]:
    lines = [
        {"instrument_token": token, "exchange_token": token // 256, "tradingsymbol": symbol,
         "name": symbol.title(), "expiry": "", "tick_size": "0.05", "lot_size": 1,
         "instrument_type": "EQ", "segment": "NSE", "exchange": "NSE"}
        for token, symbol in zip(p.tokens, EQUITIES, strict=False)
    ]  # fmt: skip
    expiry = "2026-01-29" if future == OLD_CONTRACT else "2026-02-26"
    lines.append(
        {"instrument_token": REUSED_TOKEN, "exchange_token": REUSED_TOKEN // 256, "tradingsymbol": future,
         "name": "NIFTY", "expiry": expiry, "tick_size": "0.05", "lot_size": 65,
         "instrument_type": "FUT", "segment": "NFO-FUT", "exchange": "NFO"}
    )  # fmt: skip
    return lines


def write_dumps(p: Plan, directory: Path) -> tuple[Path, Path]:
    """Two dumps of the broker: before the contract roll, and after it."""
    paths = []
    for name, future in (("instruments-before-roll.csv", OLD_CONTRACT), ("instruments.csv", NEW_CONTRACT)):
        path = directory / name
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_HEADER)
            writer.writeheader()
            writer.writerows(_lines(p, future))
        paths.append(path)
    return paths[0], paths[1]


_BARS = """
INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close, volume)
SELECT t.token, '1m', %(start)s::timestamptz + m * interval '1 minute',
       round(p, 2), round(p * 1.002, 2), round(p * 0.998, 2),
       round(p * (1 + sin(m + t.i) / 1000)::numeric, 2),
       1000 + (m * 7919 + t.i * 104729) %% 50000
  FROM unnest(%(tokens)s::bigint[]) WITH ORDINALITY AS t(token, i),
       generate_series(0, %(minutes)s - 1) AS m,
       LATERAL (SELECT (100 + t.i * 37 + 5 * sin(m / 60.0))::numeric AS p) AS price
"""
_SUBSCRIPTIONS = """
INSERT INTO market.subscriptions (instrument_token, subscriber, mode, created_at)
SELECT t.token, s.subscriber, s.mode, %(start)s::timestamptz - (t.i || ' days')::interval
  FROM unnest(%(tokens)s::bigint[]) WITH ORDINALITY AS t(token, i),
       (VALUES ('ticker-1', 'ltp'), ('screener', 'quote'), ('risk', 'full')) AS s(subscriber, mode)
"""
_POSITIONS = """
INSERT INTO trading.positions (account_id, instrument_token, quantity, avg_price, updated_at)
SELECT 'ACC' || a, t.token, (a * 10 + t.i) %% 90 + 1, 100 + t.i * 37, %(start)s
  FROM unnest(%(tokens)s::bigint[]) WITH ORDINALITY AS t(token, i), generate_series(1, 5) AS a
 WHERE (t.i + a) %% 3 = 0
"""
# NIFTY50 members: the equities from mid-2025; one left at the end of 2025.
_MEMBERSHIPS = """
INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from, effective_to)
SELECT 'NIFTY50', t.token, round(1.0 / %(n)s, 6), DATE '2025-06-30',
       CASE WHEN t.i = %(n)s THEN DATE '2025-12-31' END
  FROM unnest(%(tokens)s::bigint[]) WITH ORDINALITY AS t(token, i)
"""
# DXY bars of the last DXY_DAYS days up to the current minute (the live feed:
# relocation health checks their freshness): 1m, and the 5m and 1h bars derived
# from them, which stay where they are (outside the relocated slice).
_DXY = """
INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close, volume)
SELECT 'DXY', tf.timeframe, date_trunc('hour', now()) - %(days)s * interval '1 day' + m * tf.step,
       round(p, 4), round(p + 0.02, 4), round(p - 0.02, 4), round(p + 0.01, 4), 0
  FROM (VALUES ('1m', interval '1 minute'), ('5m', interval '5 minutes'), ('1h', interval '1 hour'))
         AS tf(timeframe, step),
       LATERAL generate_series(0, floor(extract(epoch FROM date_trunc('minute', now())
                                   - (date_trunc('hour', now()) - %(days)s * interval '1 day'))
                                   / extract(epoch FROM tf.step))::int) AS m,
       LATERAL (SELECT (104 + sin(m / 90.0))::numeric AS p) AS price
"""
_METADATA = """
INSERT INTO market.instrument_metadata (instrument_token, tradingsymbol, exchange, instrument_type, lot_size)
SELECT t.token, 'LEGACY' || t.i, 'NSE', 'EQ', 1
  FROM unnest(%(tokens)s::bigint[]) WITH ORDINALITY AS t(token, i)
"""


def load(conn: psycopg.Connection[Any], p: Plan) -> dict[str, int]:
    """Fill the legacy tables (they exist: revision legacy_baseline); returns rows per table."""
    params = {"start": p.start, "tokens": list(p.tokens), "minutes": p.minutes, "days": DXY_DAYS,
              "n": len(p.tokens) - 1}  # fmt: skip
    equities = {**params, "tokens": list(p.tokens[:-1])}
    counts = {}
    with conn.transaction():
        counts["market.instrument_metadata"] = conn.execute(_METADATA, params).rowcount
        counts["market.data_bars"] = conn.execute(_BARS, params).rowcount
        counts["market.subscriptions"] = conn.execute(_SUBSCRIPTIONS, params).rowcount
        counts["trading.positions"] = conn.execute(_POSITIONS, params).rowcount
        counts["screener.index_memberships"] = conn.execute(_MEMBERSHIPS, equities).rowcount
        counts["market.derived_data_bars"] = conn.execute(_DXY, params).rowcount
    conn.execute("ANALYZE")
    return counts


_WRITE = """
INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close, volume)
SELECT t, '1m', %(at)s::timestamptz, 100, 101, 99, 100.5, 1 FROM unnest(%(tokens)s::bigint[]) AS t
"""


def write_bars(conn: psycopg.Connection[Any], p: Plan, minute: int) -> int:
    """One minute of new bars for every equity, after the dataset's end (the live writer's write)."""
    at = p.end + dt.timedelta(minutes=minute)
    return conn.execute(_WRITE, {"at": at, "tokens": list(p.tokens[:-1])}).rowcount
