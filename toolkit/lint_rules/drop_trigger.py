"""DROP TRIGGER on an existing table.

Anti-pattern: on PostgreSQL 15 CREATE TRIGGER and ENABLE/DISABLE TRIGGER
take SHARE ROW EXCLUSIVE (writes wait, reads go on) but DROP TRIGGER takes
ACCESS EXCLUSIVE: even reads queue behind it (squawk does not see this).
Best practice: CREATE OR REPLACE TRIGGER (PostgreSQL 14+) to change one, or
ALTER TABLE ... DISABLE TRIGGER to stop it; drop under a short lock_timeout.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import ast, enums

from toolkit.lint_rules import Rule, ScriptState


def check(node: Any, state: ScriptState) -> Iterable[str]:
    if isinstance(node, ast.DropStmt) and node.removeType == enums.ObjectType.OBJECT_TRIGGER:
        for obj in node.objects or ():
            table = ".".join(s.sval for s in obj[:-1])
            if state.is_existing(table):
                yield f"DROP TRIGGER {obj[-1].sval} takes ACCESS EXCLUSIVE on {table}"


RULE = Rule(
    id="drop_trigger",
    severity="warning",
    message="DROP TRIGGER takes ACCESS EXCLUSIVE (CREATE/ENABLE/DISABLE TRIGGER: SHARE ROW EXCLUSIVE)",
    hint="use CREATE OR REPLACE TRIGGER or DISABLE TRIGGER; if it must go, drop it under a lock_timeout",
    check=check,
)
