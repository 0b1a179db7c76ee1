"""ADD COLUMN with a volatile default (or serial, identity, stored generated) on an existing table.

Anti-pattern: since PostgreSQL 11 a constant or stable default is stored in
the catalog, but a volatile one (random(), clock_timestamp(),
gen_random_uuid(), nextval() behind serial/identity) is computed per row:
the table is rewritten under ACCESS EXCLUSIVE.
Best practice: add the column without a default (or with a constant), set
the default for new rows, and backfill existing rows in batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import ast, enums

from toolkit.lint_rules import Rule, ScriptState, alter_commands
from toolkit.parsing import relation_name, walk

# Volatile functions of PostgreSQL 15 likely to appear in a default (provolatile = 'v').
VOLATILE_FUNCTIONS = {
    "random",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "nextval",
    "setval",
    "txid_current",
    "pg_current_xact_id",
}
SERIAL_TYPES = {"smallserial", "serial", "bigserial", "serial2", "serial4", "serial8"}


def _why(column: Any) -> str | None:
    type_name = column.typeName.names[-1].sval if column.typeName else ""
    if type_name in SERIAL_TYPES:
        return f"type {type_name} (nextval per row)"
    for con in column.constraints or ():
        if con.contype == enums.ConstrType.CONSTR_IDENTITY:
            return "GENERATED ... AS IDENTITY (a value per row)"
        if con.contype == enums.ConstrType.CONSTR_GENERATED:
            return "GENERATED ... STORED (computed per row)"
        if con.contype == enums.ConstrType.CONSTR_DEFAULT:
            for node, _ in walk(con.raw_expr):
                name = node.funcname[-1].sval if isinstance(node, ast.FuncCall) and node.funcname else None
                if name in VOLATILE_FUNCTIONS:
                    return f"DEFAULT {name}() is volatile"
    return None


def check(node: Any, state: ScriptState) -> Iterable[str]:
    for cmd in alter_commands(node, enums.AlterTableType.AT_AddColumn):
        table = relation_name(node.relation)
        why = _why(cmd.def_)
        if why and state.is_existing(table):
            yield f"column {cmd.def_.colname} on {table}: {why}"


RULE = Rule(
    id="add_column_volatile_default",
    severity="error",
    message="ADD COLUMN with a volatile default rewrites the whole table under ACCESS EXCLUSIVE",
    hint="add the column with no default or a constant one, then backfill existing rows in batches",
    check=check,
)
