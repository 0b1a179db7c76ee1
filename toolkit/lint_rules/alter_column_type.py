"""ALTER COLUMN TYPE on an existing table.

Anti-pattern: unless the change is binary-coercible (varchar(n) -> text,
varchar(n) -> varchar(m > n), numeric(p,s) -> numeric(q > p,s)) and has no
USING clause, Postgres rewrites the table and rebuilds its indexes under
ACCESS EXCLUSIVE. The old type is not in the script, so the linter cannot
tell: a known-safe change is silenced with its reason.
Best practice: add a new column, dual-write and backfill it, then switch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import enums

from toolkit.lint_rules import Rule, ScriptState, alter_commands
from toolkit.parsing import relation_name


def check(node: Any, state: ScriptState) -> Iterable[str]:
    for cmd in alter_commands(node, enums.AlterTableType.AT_AlterColumnType):
        table = relation_name(node.relation)
        if not state.is_existing(table):
            continue
        new_type = ".".join(n.sval for n in cmd.def_.typeName.names)
        using = " with USING (always a rewrite)" if cmd.def_.raw_default is not None else ""
        yield f"{table}.{cmd.name} -> {new_type}{using}"


RULE = Rule(
    id="alter_column_type",
    severity="error",
    message="ALTER COLUMN TYPE rewrites the table under ACCESS EXCLUSIVE unless binary-coercible",
    hint="add a new column, dual-write and backfill it, then switch; silence a known binary-coercible change",
    check=check,
)
