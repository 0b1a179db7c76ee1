"""The ``keyshift`` command line: parse options, call one function, print its result.

Errors are turned into one line and an exit code here, and only here:
KeyshiftError carries its own code (1 failed check or step, 2 usage or
connection), a server error is 1, a lost connection 2. No traceback reaches
the operator.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from toolkit import __version__, control, db, migrate, output
from toolkit import backfill as backfill_module
from toolkit import phases as phases_module
from toolkit import registry as registry_module
from toolkit.errors import EXIT_FAIL, EXIT_USAGE, KeyshiftError, UsageError
from toolkit.render import render as render_template
from toolkit.render import template_names

F = TypeVar("F", bound=Callable[..., Any])
DATETIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


def fail(message: str, code: int) -> None:
    click.echo(f"keyshift: error: {message}", err=True)
    sys.exit(code)


class KeyshiftGroup(click.Group):
    """A Click group that turns keyshift's and the server's errors into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyshiftError as exc:
            fail(exc.message, exc.exit_code)
        except psycopg.Error as exc:
            if db.is_connection_loss(exc):
                # The server went away mid-command: what committed stays committed.
                fail(f"lost the database connection: {db.describe_pg_error(exc)}", EXIT_USAGE)
            fail(db.describe_pg_error(exc), EXIT_FAIL)


def dsn_option(fn: F) -> F:
    """--dsn on a command; else DATABASE_URL, else the PG* variables and service files."""
    return click.option(
        "--dsn",
        metavar="DSN",
        default=None,
        help="libpq conninfo or postgresql:// URL (default: $DATABASE_URL, else PG* variables).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(fn)


@click.group(cls=KeyshiftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="keyshift")
def main() -> None:
    """keyshift: move a live trading database to a new data model without downtime."""


@main.command()
@dsn_option
@json_option
def status(dsn: str | None, as_json: bool) -> None:
    """Show the control schema: revision, tables under migration and their phase, settings."""
    with db.connection(dsn) as conn:
        state = control.status(conn)
    if as_json:
        output.echo_json(state)
        return
    click.echo(f"database {state['database']} at revision {state['revision']}")
    output.heading("\ntables under migration")
    click.echo(output.table(state["tables"]))
    output.heading("\nsettings")
    click.echo(output.table(state["settings"], ["key", "value", "description"]))
    output.heading("\nopen dead letters")
    click.echo(output.table(state["dead_letters"]))


def _parse_params(pairs: tuple[str, ...], json_pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in pairs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param {item!r} is not NAME=VALUE")
        params[name] = value
    for item in json_pairs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param-json {item!r} is not NAME=JSON")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--param-json {name}: not valid JSON ({exc.msg})") from None
    return params


@main.command()
@click.argument("template", required=False)
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A text parameter.")
@click.option(
    "--param-json",
    "json_params",
    multiple=True,
    metavar="NAME=JSON",
    help="A parameter given as JSON (lists, numbers, booleans).",
)
@click.option("--list", "list_only", is_flag=True, help="List the templates.")
def render(
    template: str | None, params: tuple[str, ...], json_params: tuple[str, ...], list_only: bool
) -> None:
    """Print a template of sql/templates rendered and validated with pglast."""
    if list_only or not template:
        for name in template_names():
            click.echo(name)
        return
    click.echo(render_template(template, **_parse_params(params, json_params)), nl=False)


@main.command(
    name="db",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@dsn_option
@click.argument("alembic_args", nargs=-1, type=click.UNPROCESSED)
def db_command(dsn: str | None, alembic_args: tuple[str, ...]) -> None:
    """Run alembic on keyshift's revisions (for installed packages): keyshift db upgrade head."""
    from alembic.config import CommandLine, Config

    cli = CommandLine(prog="keyshift db")
    options = cli.parser.parse_args(list(alembic_args) or ["--help"])
    cfg = Config(file_=str(migrate.packaged_ini()), cmd_opts=options)
    if dsn:
        cfg.attributes["dsn"] = dsn
    cli.run_cmd(cfg, options)


# ---------------------------------------------------------------- instrument registry


@main.group()
def registry() -> None:
    """The instrument registry: instruments by key, broker tokens over time."""


@registry.command("import")
@click.option("--broker", required=True, help="Broker whose dump this is (lower case, e.g. zerodha).")
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(path_type=Path))
@click.option(
    "--as-of",
    type=click.DateTime(DATETIME_FORMATS),
    default=None,
    help="When a token that now points elsewhere moves (default: now).",
)
@click.option(
    "--valid-from",
    type=click.DateTime(DATETIME_FORMATS),
    default=None,
    help="Start of a new token's first period (default: -infinity).",
)
@click.option("--dry-run", is_flag=True, help="Report what would change and change nothing.")
@dsn_option
@json_option
def registry_import(
    broker: str,
    csv_file: Path,
    as_of: dt.datetime | None,
    valid_from: dt.datetime | None,
    dry_run: bool,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Load a broker's instrument dump (CSV) in one transaction."""
    summary = registry_module.import_dump(
        dsn, csv_file, broker, as_of=_utc(as_of), valid_from=_utc(valid_from), dry_run=dry_run
    )
    if as_json:
        output.echo_json(summary)
        return
    verb = "would change" if dry_run else "changed"
    click.echo(f"{csv_file}: {summary['lines']} instruments read; registry {verb}:")
    click.echo(
        output.table(
            [
                {
                    k: summary[k]
                    for k in (
                        "instruments_new",
                        "instruments_updated",
                        "mappings_opened",
                        "mappings_closed",
                        "mappings_unchanged",
                        "open_mappings_not_in_file",
                    )
                }
            ]
        )
    )
    click.echo(f"legacy broker: {summary['legacy_broker']}")


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """A timestamp given without a zone is UTC (never the machine's zone)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------- backfill and phases


@main.command()
@click.argument("table", required=False)
@click.option("--all", "all_tables", is_flag=True, help="Every table in phase dual.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Rows in the first batch (default: setting backfill.batch_rows); it then adapts.",
)
@click.option(
    "--max-runtime",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Stop (resumably) after this many seconds.",
)
@dsn_option
@json_option
def backfill(
    table: str | None,
    all_tables: bool,
    batch_size: int | None,
    max_runtime: float | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Fill instrument_key in batches, resumable from the checkpoint (tables in phase dual)."""
    if bool(table) == all_tables:
        raise UsageError("name one TABLE (schema.table) or give --all")
    tables = backfill_module.tables_in_dual(dsn) if all_tables else [str(table)]
    results = []
    for name in tables:
        with _progress_bar(enabled=not as_json) as show:
            result = backfill_module.run(
                dsn, name, batch_rows=batch_size, max_runtime_s=max_runtime, progress=show
            )
        results.append(result.as_dict())
        if not as_json:
            click.echo(
                f"{name}: {result.status}; {result.rows_updated:,} rows updated, "
                f"{result.rows_dead_lettered:,} dead-lettered in {result.seconds:.1f} s "
                f"({result.rows_per_second:,.0f} rows/s, {result.batches} batches, "
                f"median batch {result.median_batch_ms:.0f} ms)"
            )
    if as_json:
        output.echo_json(results)


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[backfill_module.Progress], None]]:
    """A progress line on stderr: rows done of the estimate, rows/s, ETA."""
    if not enabled or not sys.stderr.isatty():
        yield lambda _p: None
        return
    with click.progressbar(
        length=1000, file=sys.stderr, show_eta=False, show_percent=True, item_show_func=lambda text: text
    ) as bar:
        shown = 0

        def show(p: backfill_module.Progress) -> None:
            nonlocal shown
            target = int(p.fraction * 1000)
            eta = f"ETA {p.eta_s:,.0f}s" if p.eta_s is not None else ""
            bar.update(
                max(0, target - shown),
                f"{p.rows_done:,}/{p.rows_estimate:,} rows {p.rows_per_second:,.0f}/s {eta} {p.note}",
            )
            shown = max(shown, target)

        yield show


@main.command()
@click.argument("table")
@click.argument("target", metavar="PHASE", type=click.Choice(phases_module.PHASES))
@click.option("--reason", required=True, help="Why (goes to the audit log).")
@click.option("--dry-run", is_flag=True, help="Print the SQL and the locks; change nothing.")
@dsn_option
@json_option
def phase(table: str, target: str, reason: str, dry_run: bool, dsn: str | None, as_json: bool) -> None:
    """Move TABLE (schema.table) to an adjacent PHASE, checking preconditions; online-safe DDL."""
    result = phases_module.change_phase(dsn, table, target, reason, dry_run=dry_run)
    if as_json:
        output.echo_json(result)
        return
    if dry_run:
        click.echo(f"-- {table}: {result['from']} -> {target} (dry run: nothing changed)")
        for step in result["steps"]:
            where = "in its own transaction" if step["transaction"] else "outside a transaction"
            click.echo(f"\n-- lock: {step['lock']}; {where}\n{step['sql']}")
        return
    if result["from"] == target:
        click.echo(f"{table} is already in phase {target}")
        return
    total = sum(s.get("seconds", 0) for s in result["steps"])
    click.echo(
        f"{table}: {result['from']} -> {result['phase']} ({len(result['steps'])} statements, {total:.1f} s)"
    )
