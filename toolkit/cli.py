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
from toolkit import reconcile as reconcile_module
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
        except click.UsageError as exc:
            usage_error(exc)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            usage_error(exc)
            raise


# click >= 8.2 raises this for a group called without a command; it prints the help.
_HELP_REQUESTS: tuple[type[Exception], ...] = tuple(
    e for e in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if e is not None
)


def usage_error(exc: click.UsageError) -> None:
    """A bad option, argument or command as one line (click's own prints usage lines too)."""
    if isinstance(exc, _HELP_REQUESTS):
        raise exc
    names: list[str] = []
    ctx = exc.ctx
    while ctx is not None and ctx.parent is not None:  # the root's name is the program's
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    where = " ".join(["keyshift", *names])
    fail(f"{where}: {exc.format_message().rstrip('.')}; see {where} --help", EXIT_USAGE)


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
    output.heading("\nrelocations")
    click.echo(output.table(state["relocations"]))
    output.heading("\nlast reconciliation of each pair")
    click.echo(output.table(state["reconciliations"]))


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


# ---------------------------------------------------------------- reconcile


@main.command()
@click.argument("name", required=False)
@click.option("--all", "all_pairs", is_flag=True, help="Every registered pair.")
@click.option("--source", help="Ad hoc: the source relation, schema.table.")
@click.option("--target", help="Ad hoc: the target relation, schema.table.")
@click.option("--key", help="Ad hoc: the key columns, COL[,COL].")
@click.option("--columns", help="Ad hoc: the columns compared (default: all shared by both sides).")
@click.option(
    "--slice", "slices", multiple=True, metavar="COL=VALUE", help="Ad hoc: only rows with COL = VALUE."
)
@click.option(
    "--bucket-by", metavar="COL:day|hour|N", help="Buckets by time or by a width (default: key hash)."
)
@click.option(
    "--tolerance",
    "tolerances",
    multiple=True,
    metavar="COL=abs:N|rel:N|precision:UNIT",
    help="Ad hoc: a column's tolerance (default exact); UNIT second, minute ...",
)
@click.option("--mode", type=click.Choice(reconcile_module.MODES), default="strict", show_default=True)
@click.option("--max-rows", type=click.IntRange(min=0), default=100, show_default=True, help="Rows listed.")
@click.option("--history", "show_history", is_flag=True, help="List past runs (of NAME, or all).")
@click.option("--serial", is_flag=True, help="One backend instead of two sharing a snapshot.")
@dsn_option
@json_option
@click.pass_context
def reconcile(
    ctx: click.Context,
    name: str | None,
    all_pairs: bool,
    source: str | None,
    target: str | None,
    key: str | None,
    columns: str | None,
    slices: tuple[str, ...],
    bucket_by: str | None,
    tolerances: tuple[str, ...],
    mode: str,
    max_rows: int,
    show_history: bool,
    serial: bool,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Compare two relations by counts and checksums per bucket, listing the rows that differ.

    NAME runs a registered pair, --all all of them; --source/--target/--key compare
    two relations ad hoc. Exit 0 when every pair passes, 1 when one does not.
    """
    adhoc = any((source, target, key, columns, slices, bucket_by, tolerances))
    if show_history:
        with db.connection(dsn, autocommit=True) as conn:
            rows = reconcile_module.history(conn, name)
        if as_json:
            output.echo_json(rows)
        else:
            click.echo(output.table(rows))
        return
    if sum((bool(name), all_pairs, adhoc)) != 1:
        raise UsageError("give one of: a pair NAME, --all, or --source/--target/--key (ad hoc)")
    if adhoc and not (source and target and key):
        raise UsageError("an ad-hoc reconcile needs --source, --target and --key")
    options: dict[str, Any] = {"mode": mode, "max_rows": max_rows}
    if not serial:
        options["helper_dsn"] = db.resolve_dsn(dsn)
    with db.connection(dsn, autocommit=True) as conn, _reconcile_progress(not as_json) as show:
        options["progress"] = show
        if all_pairs:
            results = reconcile_module.run_all(conn, **options)
        elif name:
            results = [reconcile_module.run_pair(conn, name, **options)]
        else:
            results = [
                reconcile_module.run_adhoc(
                    conn,
                    str(source),
                    str(target),
                    _csv(key) or [],
                    _csv(columns),
                    _pairs("--slice", slices),
                    bucket_by,
                    _pairs("--tolerance", tolerances),
                    **options,
                )
            ]
    if as_json:
        output.echo_json([r.as_dict() for r in results])
    elif not results:
        click.echo("no registered reconcile pairs")
    else:
        for r in results:
            _print_result(r)
    if not all(r.passed for r in results):
        ctx.exit(EXIT_FAIL)


def _csv(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",")] if text else None


def _pairs(option: str, items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise UsageError(f"{option} {item!r} is not COL=VALUE")
        out[column] = value
    return out


@contextlib.contextmanager
def _reconcile_progress(enabled: bool) -> Iterator[Callable[[reconcile_module.Progress], None]]:
    """Progress on stderr (a terminal only): the step and buckets done of total."""
    if not enabled or not sys.stderr.isatty():
        yield lambda _p: None
        return

    def show(p: reconcile_module.Progress) -> None:
        click.echo(f"\r{p.step}: {p.done}/{p.total}\033[K", nl=False, err=True)

    yield show
    click.echo("\r\033[K", nl=False, err=True)


def _print_result(r: reconcile_module.Result) -> None:
    output.heading(f"{r.pair} ({r.kind}): {r.verdict.upper()}")
    click.echo(
        f"{r.source} -> {r.target}; mode {r.mode} (needs {r.threshold * 100:g}%); "
        f"match {r.match_ratio * 100:.4f}%; rows {r.rows_source:,} / {r.rows_target:,}, "
        f"matched {r.rows_matched:,}; buckets mismatched {r.buckets_mismatched} of {r.buckets_total}; "
        f"{r.duration_ms:,.0f} ms; run {r.run_id}"
    )
    for note in r.notes:
        click.echo(f"note: {note}")
    if r.categories:
        click.echo(", ".join(f"{k}: {v:,}" for k, v in sorted(r.categories.items())))
    rows = [
        {
            "category": d.category,
            "key": ", ".join(f"{k}={v}" for k, v in d.key.items()),
            "column": col,
            "source": vals["source"],
            "target": vals["target"],
            "rows (source/target)": f"{d.source_rows}/{d.target_rows}",
            "note": d.note,
        }
        for d in r.differences
        for col, vals in (d.columns.items() or [("", {"source": None, "target": None})])
    ]
    if rows:
        click.echo(output.table(rows))


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


# ---------------------------------------------------------------- lint


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--revisions", is_flag=True, help="Lint the offline SQL of the whole revision chain (default).")
@click.option(
    "--trace-locks",
    is_flag=True,
    help="Also apply each revision to a throwaway database and report the locks it took and its rewrites.",
)
@dsn_option
@json_option
def lint(paths: tuple[Path, ...], revisions: bool, trace_locks: bool, dsn: str | None, as_json: bool) -> None:
    """Find DDL that would lock or rewrite a busy table, in SQL files, templates and revisions.

    With no PATHS the revision chain is linted. Exit 1 on any finding not
    silenced by a `-- keyshift-lint: ignore=RULE reason="..."` comment.
    --trace-locks needs a server (--dsn) where it may create a database.
    """
    from toolkit import lint as lint_module
    from toolkit.lint_rules import lock_budget

    report = lint_module.lint(paths, revisions=revisions)
    traces = lock_budget.trace_locks(dsn) if trace_locks else []
    for trace in traces:
        report.findings.extend(lint_module.trace_findings(trace))
    if as_json:
        data = report.as_dict()
        if trace_locks:
            data["traces"] = [t.as_dict() for t in traces]
        output.echo_json(data)
    else:
        _print_lint(report, traces)
    if report.failed:
        sys.exit(EXIT_FAIL)


def _print_lint(report: Any, traces: list[Any]) -> None:
    for trace in traces:
        budget = f" (LOCK_BUDGET {trace.budget})" if trace.budget else ""
        output.heading(
            f"revision {trace.revision}: locks on tables that existed before it{budget}"
            " (lines of its offline SQL)"
        )
        locks = [{**lock, "observed": "yes"} for lock in trace.locks]
        locks += [{**lock, "observed": "no (outside a transaction)"} for lock in trace.unobserved]
        click.echo(
            output.table(
                sorted(locks, key=lambda r: r["line"]), ["line", "table", "mode", "observed", "statement"]
            )
        )
        click.echo(f"rewritten: {', '.join(trace.rewritten) or 'none'}\n")
    rows = [
        {
            "where": f"{f.file}:{f.line}",
            "rule": f.rule,
            "severity": f.severity,
            "finding": f.detail,
            "silenced": f.silenced or "",
        }
        for f in report.findings
    ]
    if rows:
        click.echo(output.table(rows))
    summary = report.as_dict()
    click.echo(
        f"{summary['findings']} findings, {summary['silenced']} silenced, in {summary['scripts']} scripts"
    )
    for skipped in report.skipped:
        click.echo(f"not linted: {skipped}")
    for f in report.findings:
        if f.silenced is None:
            click.echo(f"hint [{f.rule}] {f.file}:{f.line}: {f.hint}")


# ---------------------------------------------------------------- audit


@main.group()
def audit() -> None:
    """Audits of what still depends on the old data model."""


@audit.command("tokens")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--database", is_flag=True, help="Also scan the database (the default when no PATHS are given)."
)
@dsn_option
@json_option
def audit_tokens(paths: tuple[Path, ...], database: bool, dsn: str | None, as_json: bool) -> None:
    """Report every place that uses instrument_token as an identifier; exit 1 if any.

    PATHS: SQL files, templates (as the revisions render them), Python files
    (their SQL strings), or directories of them. With no PATHS, or with
    --database: the database's columns, keys, indexes, functions, views,
    triggers and pg_stat_statements.
    """
    from toolkit import audit as audit_module

    usages = audit_module.audit_tokens(paths, dsn, database=database)
    if as_json:
        output.echo_json({"usages": len(usages), "results": [u.as_dict() for u in usages]})
    else:
        rows = [
            {
                "where": f"{u.where}:{u.line}" if u.line else u.where,
                "source": u.source,
                "context": u.context,
                "statement": u.statement,
            }
            for u in usages
        ]
        if rows:
            click.echo(output.table(rows))
        click.echo(f"{len(usages)} uses of {audit_module.TOKEN}")
    if usages:
        sys.exit(EXIT_FAIL)


# ---------------------------------------------------------------- relocate (issue 5)
from toolkit import relocation as relocation_module  # noqa: E402


@main.group()
def relocate() -> None:
    """Move a slice of rows to another table: copy, switch readers, soak, clean up, purge."""


@relocate.group()
def dxy() -> None:
    """DXY 1m bars: market.derived_data_bars -> market.data_bars."""


def _relocation_echo(result: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        output.echo_json(result)
    else:
        click.echo(line)


@dxy.command("plan")
@dsn_option
@json_option
def dxy_plan(dsn: str | None, as_json: bool) -> None:
    """Show the step, the row counts on both sides and what comes next; change nothing."""
    r = relocation_module.plan(dsn, "dxy")
    _relocation_echo(
        r,
        as_json,
        f"dxy_1m_bars at step {r['step']}: source {r['source_rows']:,} rows over {r['days']['n']} days "
        f"({r['days']['first']} .. {r['days']['last']}), target {r['target_rows']:,} rows; next: {r['next']}",
    )


@dxy.command("copy")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Rows per batch (setting dxy.batch_size)."
)
@click.option("--reason", default="DXY copy", show_default=True, help="Why (audit log).")
@dsn_option
@json_option
def dxy_copy(batch_size: int | None, reason: str, dsn: str | None, as_json: bool) -> None:
    """Copy the history in batches (resumable, idempotent), comparing per-day counts."""
    r = relocation_module.copy(dsn, "dxy", batch_size, reason)
    _relocation_echo(
        r,
        as_json,
        f"dxy copy{' (resumed)' if r['resumed'] else ''}: {r['rows_read']:,} rows read, "
        f"{r['rows_inserted']:,} inserted in {r['batches']} batches, "
        f"{r['days_checked']} day counts compared, {len(r['mismatched_days'])} differ; "
        f"source {r['source_rows']:,}, target {r['target_rows']:,}; "
        f"step {r['step']} ({r['seconds']:.1f} s)",
    )
    if r["mismatched_days"]:
        if not as_json:
            click.echo(output.table([{"day": d, **v} for d, v in r["mismatched_days"].items()]))
        fail("the copy left days whose counts differ; readers were not switched", EXIT_FAIL)


@dxy.command("switch")
@click.option("--reason", required=True, help="Why (audit log).")
@dsn_option
@json_option
def dxy_switch(reason: str, dsn: str | None, as_json: bool) -> None:
    """Switch market.bars_1m to read DXY from data_bars only (one transaction)."""
    r = relocation_module.switch(dsn, "dxy", reason)
    _relocation_echo(
        r,
        as_json,
        f"market.bars_1m reads DXY from market.data_bars ({r['rows']:,} bars) since {r['switched_at']}; "
        f"soak window {r['soak_window']}",
    )


@dxy.command("health")
@dsn_option
@json_option
def dxy_health(dsn: str | None, as_json: bool) -> None:
    """Newest bar fresh, 5m and 1h aggregates advancing, no duplicate keys; exit 1 if not."""
    r = relocation_module.health(dsn, "dxy")
    if as_json:
        output.echo_json(r)
    else:
        click.echo(output.table(r["checks"], ["check", "ok", "newest", "age", "limit"]))
    if not r["ok"]:
        sys.exit(EXIT_FAIL)


@dxy.command("cleanup")
@click.option("--force", is_flag=True, help="Override the soak window (needs --reason; audit-logged).")
@click.option("--reason", default=None, help="Why (audit log); required with --force.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Rows per batch.")
@dsn_option
@json_option
def dxy_cleanup(
    force: bool, reason: str | None, batch_size: int | None, dsn: str | None, as_json: bool
) -> None:
    """Soft-delete the old rows, once the soak window has passed and the last reconciliation passed."""
    if force and not reason:
        raise UsageError("--force needs --reason TEXT (it goes to the audit log)")
    reason = reason or "DXY cleanup"
    r = relocation_module.cleanup(dsn, "dxy", force=force, reason=reason, batch_size=batch_size)
    _relocation_echo(
        r,
        as_json,
        f"dxy cleanup: {r['rows_marked']:,} source rows marked in {r['batches']} batches "
        f"({r['source_marked']:,} marked of {r['source_rows']:,}); step {r['step']}",
    )


@dxy.command("purge")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Rows per batch.")
@click.option("--reason", default="DXY purge", show_default=True, help="Why (audit log).")
@dsn_option
@json_option
def dxy_purge(batch_size: int | None, reason: str, dsn: str | None, as_json: bool) -> None:
    """Delete the marked rows in batches (only those data_bars holds)."""
    r = relocation_module.purge(dsn, "dxy", reason=reason, batch_size=batch_size)
    _relocation_echo(
        r,
        as_json,
        f"dxy purge: {r['rows_deleted']:,} rows deleted in {r['batches']} batches, "
        f"{r['rows_dead_lettered']:,} kept and dead-lettered (absent from data_bars); step {r['step']}",
    )


@dxy.command("rollback")
@click.option("--reason", required=True, help="Why (audit log).")
@dsn_option
@json_option
def dxy_rollback(reason: str, dsn: str | None, as_json: bool) -> None:
    """Readers back to derived_data_bars; data_bars' DXY bars go back there first (before purge only)."""
    r = relocation_module.rollback(dsn, "dxy", reason)
    _relocation_echo(
        r,
        as_json,
        f"dxy rolled back from step {r['from_step']}: {r['rows_restored']:,} bars restored to "
        f"derived_data_bars, {r['rows_unmarked']:,} unmarked, {r['rows_removed']:,} removed from data_bars",
    )


@dxy.command("status")
@dsn_option
@json_option
def dxy_status(dsn: str | None, as_json: bool) -> None:
    """The step, soak time left, copy progress, last reconciliation and health results."""
    r = relocation_module.status(dsn, "dxy")
    if as_json:
        output.echo_json(r)
        return
    click.echo(
        f"dxy_1m_bars: step {r['step']}; source {r['source_rows']:,} rows "
        f"({r['source_marked']:,} marked), target {r['target_rows']:,}"
    )
    if r["switched_at"]:
        click.echo(f"switched at {r['switched_at']}; soak window {r['soak_window']}, left {r['soak_left']}")
    if r["copy"]:
        c = r["copy"]
        click.echo(f"copy: {c['status']}, {c['rows_done']:,} rows inserted, cursor {c['last_key']}")
    rec, health = r["last_reconcile"], r["last_health"]
    rec_text = f"run {rec['id']} {rec['verdict']} at {rec['started_at']}" if rec else "none"
    health_text = f"{health['status']} {health['details']}" if health else "none"
    click.echo(f"last reconcile: {rec_text}; last health: {health_text}")


# ---------------------------------------------------------------- metrics, report, demo (issue 10)


@main.command()
@click.option(
    "--textfile",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write atomically to this *.prom file (node_exporter textfile collector) instead of stdout.",
)
@dsn_option
def metrics(textfile: Path | None, dsn: str | None) -> None:
    """Prometheus metrics: phases, backfill progress and rate, dead letters, reconciliation."""
    from toolkit import metrics as metrics_module

    with db.connection(dsn, autocommit=True) as conn:
        if textfile is None:
            click.echo(metrics_module.exposition(conn), nl=False)
            return
        metrics_module.write_textfile(conn, textfile)
    click.echo(f"metrics written to {textfile}")


@main.command()
@click.option(
    "--html",
    "html_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the self-contained HTML page here.",
)
@dsn_option
@json_option
def report(html_path: Path, dsn: str | None, as_json: bool) -> None:
    """Cutover report: phase timeline, backfill, reconciliation history, dead letters, pre-flight."""
    from toolkit import report as report_module

    with db.connection(dsn, autocommit=True) as conn:
        summary = report_module.write(conn, html_path)
    if as_json:
        output.echo_json({"html": str(html_path), **summary})
        return
    verdict = "READY" if summary["ready"] else "NOT READY"
    click.echo(f"report written to {html_path}: {verdict}")


@main.command()
@click.option(
    "--rows",
    type=click.IntRange(min=100),
    default=200_000,
    show_default=True,
    help="Legacy minute bars to generate.",
)
@click.option("--keep", is_flag=True, help="Keep the scratch database (needs a configured server).")
@dsn_option
@json_option
def demo(rows: int, keep: bool, dsn: str | None, as_json: bool) -> None:
    """The whole migration on a generated legacy database: a scratch database, or an embedded server."""
    from toolkit import demo as demo_module

    echo = (lambda _line: None) if as_json else click.echo
    outcomes, summary = demo_module.run(dsn, rows, keep, echo)
    if as_json:
        output.echo_json({"steps": [vars(o) for o in outcomes], "summary": summary})
    else:
        output.heading("\nsummary")
        click.echo(
            output.table(
                [{"step": o.step, "status": o.status, "seconds": round(o.seconds, 1), "note": o.note}
                 for o in outcomes]
            )
        )  # fmt: skip
        figures = [
            {"figure": "rows migrated (backfill)", "value": f"{summary['rows_migrated']:,}"},
            {"figure": "rows/s (backfill)", "value": f"{summary['rows_per_second']:,}"},
            *({"figure": f"reconciliation {p}", "value": v} for p, v in summary["reconciliation"].items()),
            {"figure": "open dead letters", "value": f"{summary['open_dead_letters']:,}"},
        ]
        click.echo("\n" + output.table(figures))
        verdict = "every step passed" if summary["passed"] else "NOT every step passed"
        click.echo(f"\ndemo: {verdict} ({', '.join(f'{v} {k}' for k, v in summary['steps'].items() if v)})")
    if not summary["passed"]:
        sys.exit(EXIT_FAIL)
