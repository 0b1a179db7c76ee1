"""ADD FOREIGN KEY or CHECK on an existing table without NOT VALID.

Anti-pattern: the constraint is validated at once, scanning the table
(and for a foreign key the referenced one) while holding ACCESS EXCLUSIVE
(CHECK) or SHARE ROW EXCLUSIVE on both tables (FOREIGN KEY).
Best practice: ADD CONSTRAINT ... NOT VALID (an instant), then VALIDATE
CONSTRAINT in a later transaction (SHARE UPDATE EXCLUSIVE).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import ast, enums

from toolkit.lint_rules import Rule, ScriptState, alter_commands
from toolkit.parsing import relation_name

_KINDS = {enums.ConstrType.CONSTR_FOREIGN: "FOREIGN KEY", enums.ConstrType.CONSTR_CHECK: "CHECK"}


def check(node: Any, state: ScriptState) -> Iterable[str]:
    for cmd in alter_commands(node, enums.AlterTableType.AT_AddConstraint):
        con = cmd.def_
        if not isinstance(con, ast.Constraint) or con.contype not in _KINDS or con.skip_validation:
            continue
        table = relation_name(node.relation)
        if state.is_existing(table):
            yield f"{_KINDS[con.contype]} {con.conname or '(unnamed)'} on {table} is validated at once"


RULE = Rule(
    id="constraint_not_valid",
    severity="error",
    message="ADD FOREIGN KEY or CHECK without NOT VALID validates under a lock that blocks writes",
    hint="ADD CONSTRAINT ... NOT VALID, then ALTER TABLE ... VALIDATE CONSTRAINT in its own transaction",
    check=check,
)
