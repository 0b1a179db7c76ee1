"""Realistic legacy data for the benchmarks: ~5,000 instruments, reused tokens, minute bars."""

from __future__ import annotations

from typing import Any

import psycopg

BROKER = "zerodha"
FIRST_TOKEN = 100_001
START = "2026-01-05 03:45:00+00"  # 09:15 IST


def registry(
    conn: psycopg.Connection[Any],
    instruments: int = 5000,
    reused: int = 500,
    reuse_at: str = "2026-01-20 00:00:00+00",
    extra_mappings: int = 0,
) -> None:
    """``instruments`` tokens; the first ``reused`` of them mean another instrument from ``reuse_at``."""
    conn.execute(
        "INSERT INTO instrument_registry.instruments (instrument_key, symbol, exchange, instrument_type)"
        " SELECT 'S' || i || '_NSE_EQUITY', 'S' || i, 'NSE', 'EQUITY' FROM generate_series(1, %s) i",
        (instruments + reused + extra_mappings,),
    )
    conn.execute(
        "INSERT INTO instrument_registry.broker_instrument_tokens"
        " (broker, instrument_token, instrument_key, valid_to)"
        " SELECT %s, %s + i - 1, 'S' || i || '_NSE_EQUITY', CASE WHEN i <= %s THEN %s::timestamptz END"
        " FROM generate_series(1, %s) i",
        (BROKER, FIRST_TOKEN, reused, reuse_at, instruments),
    )
    conn.execute(
        "INSERT INTO instrument_registry.broker_instrument_tokens"
        " (broker, instrument_token, instrument_key, valid_from)"
        " SELECT %s, %s + i - 1, 'S' || (%s + i) || '_NSE_EQUITY', %s::timestamptz"
        " FROM generate_series(1, %s) i",
        (BROKER, FIRST_TOKEN, instruments, reuse_at, reused),
    )
    if extra_mappings:
        # Tokens that only ever existed later: more mappings for lookup benchmarks.
        conn.execute(
            "INSERT INTO instrument_registry.broker_instrument_tokens"
            " (broker, instrument_token, instrument_key)"
            " SELECT %s, 900000 + i, 'S' || (%s + i) || '_NSE_EQUITY' FROM generate_series(1, %s) i",
            (BROKER, instruments + reused, extra_mappings),
        )
    conn.execute("SELECT keyshift.set_setting('registry.legacy_broker', %s, 'benchmark')", (BROKER,))


# Each minute's bars of all instruments together ("time"), or each
# instrument's bars together ("instrument"); %(...)s are bound parameters.
_BARS_ORDER = {
    "time": ("%(first)s + mod(i, %(instruments)s)", "i / %(instruments)s"),
    "instrument": ("%(first)s + i / %(per)s", "mod(i, %(per)s)"),
}
_BARS = (
    "SELECT {token} AS instrument_token, '1m'::text AS timeframe,"
    " %(start)s::timestamptz + ({minute}) * interval '1 minute' AS ts,"
    " 100 + mod(i, 97) * 0.05 AS open, 101 + mod(i, 89) * 0.05 AS high, 99 + mod(i, 83) * 0.05 AS low,"
    " 100.5 + mod(i, 79) * 0.05 AS close, 1000 + mod(i, 5000) AS volume"
    " FROM generate_series(0, %(rows)s - 1) i"
)


def bars_sql(
    rows: int,
    order: str = "time",
    start_token: int = FIRST_TOKEN,
    instruments: int = 5000,
    start: str = START,
) -> tuple[str, dict[str, Any]]:
    """A SELECT of ``rows`` minute bars, in ``order`` ("time" or "instrument"), and its parameters."""
    token, minute = _BARS_ORDER[order]
    params = {
        "first": start_token,
        "instruments": instruments,
        "per": max(1, rows // instruments),
        "start": start,
        "rows": rows,
    }
    return _BARS.format(token=token, minute=minute), params


def legacy_bars(conn: psycopg.Connection[Any], rows: int, order: str = "time") -> None:
    """Bars written before keyshift: no key column yet, no trigger."""
    select, params = bars_sql(rows, order)
    conn.execute(
        "INSERT INTO market.data_bars (instrument_token, timeframe, ts, open, high, low, close, volume) "
        + select,
        params,
    )
