"""Legacy data for tests: a small registry with a reused token, and bars before key_columns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from toolkit import migrate

BROKER = "zerodha"
REUSE_AT = "2026-01-01 00:00:00+00"

# Token 101 meant AAA until REUSE_AT and BBB from then on; 102 is M&M throughout.
REGISTRY_SQL = """
INSERT INTO instrument_registry.instruments (instrument_key, symbol, exchange, instrument_type) VALUES
  ('AAA_NSE_EQUITY', 'AAA', 'NSE', 'EQUITY'),
  ('BBB_NSE_EQUITY', 'BBB', 'NSE', 'EQUITY'),
  ('M&M_NSE_EQUITY', 'M&M', 'NSE', 'EQUITY'),
  ('NIFTY24JANFUT_NFO_FUTURE', 'NIFTY24JANFUT', 'NFO', 'FUTURE');
INSERT INTO instrument_registry.broker_instrument_tokens (broker, instrument_token, instrument_key, valid_from, valid_to) VALUES
  ('zerodha', 101, 'AAA_NSE_EQUITY', '-infinity', '2026-01-01 00:00:00+00'),
  ('zerodha', 101, 'BBB_NSE_EQUITY', '2026-01-01 00:00:00+00', NULL),
  ('zerodha', 102, 'M&M_NSE_EQUITY', '-infinity', NULL),
  ('zerodha', 103, 'NIFTY24JANFUT_NFO_FUTURE', '-infinity', NULL);
"""


def seed_registry(conn: psycopg.Connection[Any]) -> None:
    conn.execute(REGISTRY_SQL)
    conn.execute("SELECT keyshift.set_setting('registry.legacy_broker', %s, 'test registry')", (BROKER,))


def legacy_bars(
    conn: psycopg.Connection[Any],
    tokens: tuple[int, ...] = (101, 102, 103),
    minutes: int = 200,
    start: str = "2025-12-31 22:00:00+00",
) -> int:
    """Minute bars for each token from ``start``; returns rows inserted."""
    cur = conn.execute(
        "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close, volume)"
        " SELECT t, '1m', %s::timestamptz + m * interval '1 minute', 1.5, 2.25, 1.0, 2.0, m"
        " FROM unnest(%s::bigint[]) t, generate_series(0, %s - 1) m",
        (start, list(tokens), minutes),
    )
    return cur.rowcount


def make_legacy_db(
    new_db: Callable[..., str], *, bars_tokens: tuple[int, ...] = (101, 102, 103), minutes: int = 200
) -> str:
    """A database at instrument_registry with a seeded registry and legacy rows, then key_columns.

    The legacy rows exist before the key column does, so they have no key: what
    the backfill is for.
    """
    dsn = new_db("instrument_registry")
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_registry(conn)
        legacy_bars(conn, bars_tokens, minutes)
        conn.execute(
            "INSERT INTO market.subscriptions (instrument_token, subscriber, created_at)"
            " VALUES (101, 'alice', '2025-06-01'), (101, 'bob', '2026-06-01'), (102, 'carol', now())"
        )
        conn.execute(
            "INSERT INTO trading.positions (account_id, instrument_token, quantity, avg_price, updated_at)"
            " VALUES ('acc1', 101, 10, 100.5, '2025-06-01'), ('acc1', 102, 5, 20, now())"
        )
    migrate.upgrade(dsn, "key_columns")
    return dsn
