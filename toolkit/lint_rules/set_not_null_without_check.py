"""SET NOT NULL on an existing table without a validated CHECK (column IS NOT NULL) first.

Anti-pattern: SET NOT NULL scans the whole table under ACCESS EXCLUSIVE.
Best practice (PostgreSQL 12+): ADD CONSTRAINT c CHECK (col IS NOT NULL)
NOT VALID; VALIDATE CONSTRAINT c (SHARE UPDATE EXCLUSIVE: reads and writes
go on); then SET NOT NULL skips the scan; then drop the CHECK.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import enums

from toolkit.lint_rules import Rule, ScriptState, alter_commands
from toolkit.parsing import relation_name


def check(node: Any, state: ScriptState) -> Iterable[str]:
    for cmd in alter_commands(node, enums.AlterTableType.AT_SetNotNull):
        table = relation_name(node.relation)
        if state.is_existing(table) and (table, cmd.name) not in state.proven_not_null:
            yield f"{table}.{cmd.name}: no validated CHECK ({cmd.name} IS NOT NULL) earlier in the script"


RULE = Rule(
    id="set_not_null_without_check",
    severity="error",
    message="SET NOT NULL without a validated CHECK scans the table under ACCESS EXCLUSIVE",
    hint="ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT c; then SET NOT NULL",
    check=check,
)
