"""The ``keyshift`` command line: parse options, call one function, print its result.

Errors are turned into one line and an exit code here, and only here:
KeyshiftError carries its own code (1 failed check or step, 2 usage or
connection), a server error is 1, a lost connection 2. No traceback reaches
the operator.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg

from toolkit import __version__, control, db, migrate, output
from toolkit.errors import EXIT_FAIL, EXIT_USAGE, KeyshiftError, UsageError
from toolkit.render import render as render_template
from toolkit.render import template_names

F = TypeVar("F", bound=Callable[..., Any])


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
        except psycopg.OperationalError as exc:
            # The server went away or refused mid-command: nothing to retry blindly.
            fail(f"lost the database connection: {db.describe_pg_error(exc)}", EXIT_USAGE)
        except psycopg.Error as exc:
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
