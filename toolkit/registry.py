"""Loading a broker's instrument dump into the registry (keyshift registry import).

The file is checked line by line first (columns, tokens, the key each line
builds, duplicates), so a bad line is reported with its number before the
database is touched. The load itself is one transaction running
``sql/registry_import.sql``: either the whole file is in, or nothing is.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from toolkit import db
from toolkit.control import require_control_schema
from toolkit.errors import EXIT_USAGE, KeyshiftError, UsageError
from toolkit.parsing import statements
from toolkit.resources import sql_dir

REQUIRED = ("instrument_token", "tradingsymbol", "exchange", "instrument_type")
# The same rule as the CHECK on instrument_registry.instruments.
KEY_RULE = re.compile(r"^[A-Z0-9][A-Z0-9.&-]*_[A-Z0-9]+_[A-Z]+$")
BROKER_RULE = re.compile(r"^[a-z][a-z0-9_]*$")
# Broker instrument-type codes and the registry's names for them.
TYPE_NAMES = {
    "EQ": "EQUITY",
    "EQUITY": "EQUITY",
    "FUT": "FUTURE",
    "FUTURE": "FUTURE",
    "FUTIDX": "FUTURE",
    "FUTSTK": "FUTURE",
    "CE": "OPTION",
    "PE": "OPTION",
    "OPT": "OPTION",
    "OPTION": "OPTION",
    "OPTIDX": "OPTION",
    "OPTSTK": "OPTION",
    "INDEX": "INDEX",
    "IDX": "INDEX",
    "ETF": "ETF",
}


@dataclass(frozen=True)
class Line:
    line: int
    instrument_token: int
    instrument_key: str
    symbol: str
    exchange: str
    instrument_type: str
    metadata: dict[str, str]


def build_key(symbol: str, exchange: str, instrument_type: str) -> tuple[str, str, str, str]:
    """(key, symbol, exchange, type) normalised the registry's way."""
    sym = symbol.strip().upper()
    exch = exchange.strip().upper()
    kind = instrument_type.strip().upper()
    kind = TYPE_NAMES.get(kind, kind)
    return f"{sym}_{exch}_{kind}", sym, exch, kind


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); convert the file, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name}"
        ) from None


def read_dump(path: Path) -> list[Line]:
    """Every line of a broker dump, validated; the first bad line is a UsageError naming it."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise UsageError(
            f"{path}:1: missing column(s) {', '.join(missing)}; the header has "
            f"{', '.join(header) or 'nothing'}; a broker dump needs {', '.join(REQUIRED)}"
        )
    reader.fieldnames = header
    lines: list[Line] = []
    tokens: dict[int, int] = {}
    keys: dict[str, int] = {}
    try:
        for row in reader:
            number = reader.line_num
            if None in row:
                raise UsageError(f"{path}:{number}: more fields than the header has columns")
            if any(row.get(c) is None for c in REQUIRED):
                raise UsageError(f"{path}:{number}: fewer fields than the header has columns")
            raw_token = (row["instrument_token"] or "").strip()
            if not re.fullmatch(r"[0-9]{1,18}", raw_token):
                raise UsageError(
                    f"{path}:{number}: instrument_token {raw_token!r} is not a positive whole number"
                )
            token = int(raw_token)
            for column in REQUIRED[1:]:
                if not (row[column] or "").strip():
                    raise UsageError(f"{path}:{number}: {column} is empty")
            key, symbol, exchange, kind = build_key(
                row["tradingsymbol"], row["exchange"], row["instrument_type"]
            )
            if not KEY_RULE.match(key):
                raise UsageError(
                    f"{path}:{number}: instrument_key {key!r} is not SYMBOL_EXCHANGE_TYPE (upper case; "
                    "the symbol may hold digits, '.', '&' and '-'; exchange letters and digits; type letters)"
                )
            if token in tokens:
                raise UsageError(
                    f"{path}:{number}: instrument_token {token} is already on line {tokens[token]}"
                )
            if key in keys:
                raise UsageError(
                    f"{path}:{number}: instrument_key {key} is already built by line {keys[key]} "
                    "(two tokens cannot mean one instrument at once)"
                )
            tokens[token], keys[key] = number, number
            metadata = {k: v for k, v in row.items() if k not in REQUIRED and v not in (None, "")}
            lines.append(Line(number, token, key, symbol, exchange, kind, metadata))
    except csv.Error as exc:
        raise UsageError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    if not lines:
        raise UsageError(f"{path}: no instruments after the header")
    return lines


def import_dump(
    dsn: str | None,
    path: Path,
    broker: str,
    *,
    as_of: dt.datetime | None = None,
    valid_from: dt.datetime | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Load a dump in one transaction; with dry_run, report the changes and roll back."""
    if not BROKER_RULE.match(broker):
        raise UsageError(f"--broker {broker!r}: use lower-case letters, digits and _ (e.g. zerodha)")
    lines = read_dump(path)
    script = statements((sql_dir() / "registry_import.sql").read_text(), origin="sql/registry_import.sql")
    # autocommit, so that conn.transaction() below is the one real transaction.
    with db.connection(dsn, autocommit=True) as conn:
        require_control_schema(conn)
        if conn.execute("SELECT to_regclass('instrument_registry.instruments')").fetchone() == (None,):
            raise KeyshiftError(
                "this database has no instrument registry; run 'alembic upgrade instrument_registry'",
                EXIT_USAGE,
            )
        try:
            with conn.transaction(force_rollback=dry_run):
                summary = _load(conn, lines, broker, as_of, valid_from, script)
                summary["legacy_broker"] = _claim_legacy_broker(conn, broker)
        except psycopg.errors.CheckViolation as exc:
            raise KeyshiftError(f"{path}: {db.describe_pg_error(exc)}") from None
        except psycopg.errors.ExclusionViolation as exc:
            raise KeyshiftError(
                f"{path}: a mapping would overlap one already registered ({db.describe_pg_error(exc)}); "
                "use --as-of after the existing period starts"
            ) from None
        except psycopg.errors.InvalidParameterValue as exc:
            raise UsageError(f"{path}: {db.describe_pg_error(exc)}") from None
    summary.update(broker=broker, file=str(path), dry_run=dry_run)
    return summary


def _load(
    conn: psycopg.Connection[Any],
    lines: list[Line],
    broker: str,
    as_of: dt.datetime | None,
    valid_from: dt.datetime | None,
    script: list[Any],
) -> dict[str, Any]:
    conn.execute(
        "CREATE TEMP TABLE import_params ON COMMIT DROP AS SELECT %s::text AS broker,"
        " COALESCE(%s::timestamptz, now()) AS as_of,"
        " COALESCE(%s::timestamptz, '-infinity') AS first_valid_from",
        (broker, as_of, valid_from),
    )
    conn.execute(
        "CREATE TEMP TABLE import_rows (line integer, instrument_token bigint, instrument_key text,"
        " symbol text, exchange text, instrument_type text, metadata jsonb) ON COMMIT DROP"
    )
    with conn.cursor().copy(
        "COPY import_rows (line, instrument_token, instrument_key, symbol, exchange, instrument_type,"
        " metadata) FROM STDIN"
    ) as copy:
        for ln in lines:
            copy.write_row(
                (
                    ln.line,
                    ln.instrument_token,
                    ln.instrument_key,
                    ln.symbol,
                    ln.exchange,
                    ln.instrument_type,
                    json.dumps(ln.metadata),
                )
            )
    summary: dict[str, Any] = {}
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        for stmt in script:
            cur.execute(stmt.text)
        row = cur.fetchone()
        assert row is not None
        summary = dict(row)
    return summary


def _claim_legacy_broker(conn: psycopg.Connection[Any], broker: str) -> str:
    """The first import names the broker whose tokens the legacy tables hold."""
    row = conn.execute("SELECT value FROM keyshift.settings WHERE key = 'registry.legacy_broker'").fetchone()
    current = row[0] if row else None
    if current is None:
        conn.execute(
            sql.SQL("SELECT keyshift.set_setting('registry.legacy_broker', {}, {})").format(
                sql.Literal(broker), sql.Literal(f"first registry import ({broker})")
            )
        )
        return broker
    return str(current)
