"""How commands print: a table for people, JSON for machines."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click
from tabulate import tabulate


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        # Exact: a float would round a numeric; an integral value stays a number.
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def to_json(data: Any) -> str:
    return json.dumps(data, default=_json_default, indent=2, sort_keys=False)


def echo_json(data: Any) -> None:
    click.echo(to_json(data))


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of dict rows (all columns, or those named)."""
    rows = list(rows)
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())
    return tabulate([[_cell(r.get(c)) for c in cols] for r in rows], headers=cols)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def heading(text: str) -> None:
    click.echo(click.style(text, bold=True))
