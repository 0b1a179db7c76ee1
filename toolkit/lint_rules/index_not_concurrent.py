"""CREATE INDEX without CONCURRENTLY on an existing table (or ADD PRIMARY KEY / UNIQUE building one).

Anti-pattern: CREATE INDEX holds SHARE on the table for the whole build:
every write waits. ADD CONSTRAINT ... UNIQUE builds its index under ACCESS
EXCLUSIVE.
Best practice: CREATE INDEX CONCURRENTLY (outside a transaction), then
ADD CONSTRAINT ... USING INDEX.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import ast, enums

from toolkit.lint_rules import Rule, ScriptState, alter_commands
from toolkit.parsing import relation_name

_KEY_TYPES = (enums.ConstrType.CONSTR_PRIMARY, enums.ConstrType.CONSTR_UNIQUE)


def check(node: Any, state: ScriptState) -> Iterable[str]:
    if isinstance(node, ast.IndexStmt) and not node.concurrent:
        table = relation_name(node.relation)
        if state.is_existing(table):
            yield f"index {node.idxname or '(unnamed)'} on existing table {table}"
    for cmd in alter_commands(node, enums.AlterTableType.AT_AddConstraint):
        con = cmd.def_
        if isinstance(con, ast.Constraint) and con.contype in _KEY_TYPES and not con.indexname:
            table = relation_name(node.relation)
            if state.is_existing(table):
                yield f"constraint {con.conname or '(unnamed)'} builds its index on {table}"


RULE = Rule(
    id="index_not_concurrent",
    severity="error",
    message="an index built without CONCURRENTLY on an existing table blocks writes for the whole build",
    hint="CREATE INDEX CONCURRENTLY (outside a transaction); for a key, then ADD CONSTRAINT ... USING INDEX",
    check=check,
)
