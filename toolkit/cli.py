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
from toolkit import dlq as dlq_module
from toolkit import memberships as memberships_module
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


# ---------------------------------------------------------------- flags, dead letters, memberships


@main.group()
def flags() -> None:
    """Settings and flags in the control schema (every change is audit-logged)."""


@flags.command("get")
@click.argument("name", required=False)
@dsn_option
@json_option
def flags_get(name: str | None, dsn: str | None, as_json: bool) -> None:
    """Show one setting, or all of them."""
    with db.connection(dsn) as conn:
        control.require_control_schema(conn)
        rows = [control.get_setting(conn, name)] if name else control.settings(conn)
    if as_json:
        output.echo_json(rows if not name else rows[0])
        return
    click.echo(output.table(rows, ["key", "value", "kind", "updated_at", "updated_by", "description"]))


@flags.command("set")
@click.argument("name")
@click.argument("value")
@click.option("--reason", required=True, help="Why (goes to the audit log).")
@dsn_option
@json_option
def flags_set(name: str, value: str, reason: str, dsn: str | None, as_json: bool) -> None:
    """Change a setting; the value is checked against its kind."""
    with db.connection(dsn, autocommit=True) as conn:
        control.require_control_schema(conn)
        try:
            change = control.set_setting(conn, name, value, reason)
        except psycopg.errors.InvalidParameterValue as exc:
            raise UsageError(db.describe_pg_error(exc)) from None
    if as_json:
        output.echo_json(change)
        return
    click.echo(f"{name}: {change['old']} -> {change['new']} ({reason})")


@main.group()
def dlq() -> None:
    """Dead letters: writes that could not be applied, with the reason."""


@dlq.command("list")
@click.option("--source", "sources", multiple=True, help="Only this source (repeatable).")
@click.option("--resolved", "include_resolved", is_flag=True, help="Include resolved letters.")
@dsn_option
@json_option
def dlq_list(sources: tuple[str, ...], include_resolved: bool, dsn: str | None, as_json: bool) -> None:
    """List open dead letters."""
    rows = dlq_module.list_letters(dsn, sources, include_resolved)
    if as_json:
        output.echo_json(rows)
        return
    click.echo(
        output.table(rows, ["id", "source", "operation", "row_identity", "attempts", "reason", "last_error"])
    )


@dlq.command("retry")
@click.option("--id", "ids", multiple=True, type=int, help="A letter to retry (repeatable).")
@click.option("--all", "retry_all", is_flag=True, help="Every open letter.")
@click.option("--source", "sources", multiple=True, help="With --all: only this source.")
@dsn_option
@json_option
def dlq_retry(
    ids: tuple[int, ...], retry_all: bool, sources: tuple[str, ...], dsn: str | None, as_json: bool
) -> None:
    """Re-apply letters through their source's SQL path; a failure counts an attempt."""
    results = dlq_module.retry(dsn, ids, retry_all, sources)
    if as_json:
        output.echo_json(results)
        return
    click.echo(output.table(results))
    applied = sum(1 for r in results if r["outcome"] == "applied")
    click.echo(f"{applied} of {len(results)} applied")


@dlq.command("resolve")
@click.argument("letter_id", metavar="ID", type=int)
@click.option("--note", required=True, help="What was done about it (goes to the audit log).")
@dsn_option
def dlq_resolve(letter_id: int, note: str, dsn: str | None) -> None:
    """Mark a letter resolved by hand."""
    dlq_module.resolve(dsn, letter_id, note)
    click.echo(f"dead letter {letter_id} resolved: {note}")


@main.group()
def memberships() -> None:
    """Index memberships: screener -> registry."""


@memberships.command("sync")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per batch (default: setting memberships.batch_size).",
)
@dsn_option
@json_option
def memberships_sync(batch_size: int | None, dsn: str | None, as_json: bool) -> None:
    """Copy the legacy memberships into the registry (initial copy, or catch-up after single-write)."""
    result = memberships_module.sync(dsn, batch_size)
    if as_json:
        output.echo_json(result)
        return
    resumed = " (resumed)" if result["resumed"] else ""
    click.echo(
        f"memberships sync{resumed}: {result['rows_applied']:,} rows applied, "
        f"{result['rows_dead_lettered']:,} dead-lettered, "
        f"{result['rows_archived_skipped']:,} already archived, "
        f"{result['orphans_archived']:,} orphans archived; "
        f"{result['batches']} batches, {result['seconds']:.1f} s"
    )
    click.echo(
        f"legacy rows {result['legacy_rows']:,}, registry rows {result['registry_rows']:,}, "
        f"archived {result['archived_rows']:,}, open dead letters {result['open_dead_letters']:,}"
    )


@main.group()
def rollback() -> None:
    """Roll a migration back to its previous state."""


@rollback.command("memberships")
@click.option("--reason", default="rollback to single-write", show_default=True, help="Why (audit log).")
@dsn_option
@json_option
def rollback_memberships(reason: str, dsn: str | None, as_json: bool) -> None:
    """Single-write: stop applying screener writes to the registry (one flag)."""
    result = memberships_module.rollback(dsn, reason)
    if as_json:
        output.echo_json(result)
        return
    click.echo(f"memberships.dual_write_enabled: {result['old']} -> {result['new']}")
    click.echo(
        "writes to screener.index_memberships no longer reach instrument_registry.index_memberships "
        f"(legacy rows {result['legacy_rows']:,}, registry rows {result['registry_rows']:,} now)"
    )
    click.echo(
        "to re-enable: keyshift flags set memberships.dual_write_enabled true --reason TEXT, "
        "then keyshift memberships sync (the catch-up)"
    )


@main.group()
def retention() -> None:
    """Archive, then delete, rows past their retention."""


@retention.command("run")
@click.argument("flow", type=click.Choice(["memberships"]))
@click.option("--dry-run", is_flag=True, help="Count what would move; move nothing.")
@dsn_option
@json_option
def retention_run(flow: str, dry_run: bool, dsn: str | None, as_json: bool) -> None:
    """Move memberships that ended more than retention_days ago into the archive."""
    result = memberships_module.retention(dsn, dry_run=dry_run)
    if as_json:
        output.echo_json(result)
        return
    if dry_run:
        click.echo(
            f"{result['rows_to_move']:,} memberships ended more than {result['retention_days']} days ago "
            "would move to the archive (dry run)"
        )
        return
    click.echo(
        f"{result['rows_moved']:,} memberships archived then deleted in {result['batches']} batches; "
        f"live {result['registry_rows']:,}, archived {result['archived_rows']:,}"
    )


# ---------------------------------------------------------------- pre-flight checks


@main.command()
@click.option(
    "--for", "step", metavar="STEP|all", default=None, help="Add the checks of STEP (all: every check)."
)
@click.option("--only", multiple=True, metavar="ID", help="Run only these checks, whatever their steps.")
@click.option("--skip", multiple=True, metavar="ID", help="Leave these checks out.")
@click.option(
    "--checks-dir", type=click.Path(path_type=Path), default=None, help="More checks, one .sql file each."
)
@dsn_option
@json_option
def preflight(
    step: str | None,
    only: tuple[str, ...],
    skip: tuple[str, ...],
    checks_dir: Path | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Run the pre-flight checks read-only; exit 1 when an error-severity check fails."""
    # Imported here: other commands do not pay for loading the checks' machinery.
    from toolkit import preflight as preflight_module

    preflight_module.plan(step, only, skip, checks_dir)  # bad --for/--only/--skip: exit 2 before connecting
    with db.connection(dsn) as conn:
        report = preflight_module.run(conn, step, only, skip, checks_dir)
    if as_json:
        output.echo_json(report.as_dict())
    else:
        _print_preflight(report)
    if not report.ok:
        sys.exit(EXIT_FAIL)


def _print_preflight(report: Any) -> None:
    """The checks as a table, the rows of each failed one, and the verdict (a preflight.Report)."""
    marks = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "skipped": "skipped"}
    rows = [
        {
            "check": r.id,
            "severity": r.severity,
            "status": marks[r.status] if r.severity == "error" or r.status != "fail" else "warn",
            "violations": r.violations,
            "remedy": r.remedy if r.status in ("fail", "error") else "",
        }
        for r in report.results
    ]
    click.echo(output.table(rows))
    for r in report.results:
        if r.status in ("fail", "error", "skipped"):
            output.heading(f"\n{r.id}: {r.summary}")
            click.echo(r.message if r.message else output.table(r.rows, r.columns))
            if r.violations > len(r.rows):
                click.echo(f"... {r.violations - len(r.rows)} more")
    failed = [r.id for r in report.results if r.blocking]
    verdict = f"FAILED ({', '.join(failed)})" if failed else "passed"
    click.echo(f"\npre-flight for {report.step}: {verdict}; {len(report.results)} checks")
