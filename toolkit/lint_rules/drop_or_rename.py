"""DROP or RENAME of an existing table or column.

Anti-pattern: code that is running (the old release, a report, a replica's
consumer) still names it and fails at once; a drop cannot be undone.
Best practice: stop every reader and writer first (a release that no longer
uses it), keep a view or a column alias for the rename, drop in a later
revision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import ast, enums

from toolkit.lint_rules import Rule, ScriptState, alter_commands
from toolkit.parsing import relation_name

_OBJ = enums.ObjectType


def check(node: Any, state: ScriptState) -> Iterable[str]:
    if isinstance(node, ast.DropStmt) and node.removeType == _OBJ.OBJECT_TABLE:
        for obj in node.objects or ():
            table = ".".join(s.sval for s in obj)
            if state.is_existing(table):
                yield f"DROP TABLE {table}"
    if (
        isinstance(node, ast.RenameStmt)
        and node.relation is not None
        and node.renameType
        in (
            _OBJ.OBJECT_TABLE,
            _OBJ.OBJECT_COLUMN,
        )
    ):
        table = relation_name(node.relation)
        if state.is_existing(table):
            what = f"column {table}.{node.subname}" if node.subname else f"table {table}"
            yield f"RENAME {what} to {node.newname}"
    for cmd in alter_commands(node, enums.AlterTableType.AT_DropColumn):
        table = relation_name(node.relation)
        if state.is_existing(table):
            yield f"DROP COLUMN {table}.{cmd.name}"


RULE = Rule(
    id="drop_or_rename",
    severity="error",
    message="DROP or RENAME of a table or column breaks the code that still uses it",
    hint="release code that no longer uses it first; keep a view or alias for a rename; drop later",
    check=check,
)
