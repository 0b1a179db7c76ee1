"""The linter's rules: one module per rule, each exporting ``RULE``.

A rule has an id (used in reports and in silencing comments), a severity, a
one-line message (the anti-pattern), a fix hint (the best practice) and a
check: a function of one parsed statement and the script's state so far that
yields one detail string per violation. Adding a rule is one module here and
one YAML file of cases in tests/lint_cases/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from toolkit.lint_rules.state import ScriptState

Check = Callable[[Any, ScriptState], Iterable[str]]


def _no_check(node: Any, state: ScriptState) -> Iterable[str]:
    return ()


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str  # error | warning
    message: str  # what is wrong (the anti-pattern)
    hint: str  # what to do instead (the best practice)
    check: Check = _no_check  # rules reported by the linter itself (syntax) have none


def all_rules() -> list[Rule]:
    """Every rule, in report order."""
    from toolkit.lint_rules import (
        add_column_volatile_default,
        alter_column_type,
        concurrently_if_not_exists,
        constraint_not_valid,
        drop_or_rename,
        drop_trigger,
        index_not_concurrent,
        lock_budget,
        missing_lock_timeout,
        set_not_null_without_check,
        syntax,
    )

    return [
        missing_lock_timeout.RULE,
        index_not_concurrent.RULE,
        concurrently_if_not_exists.RULE,
        add_column_volatile_default.RULE,
        set_not_null_without_check.RULE,
        constraint_not_valid.RULE,
        alter_column_type.RULE,
        drop_or_rename.RULE,
        drop_trigger.RULE,
        syntax.SYNTAX_ERROR,
        syntax.PLPGSQL_SYNTAX,
        syntax.SILENCE_WITHOUT_REASON,
        lock_budget.RULE,
    ]


def alter_commands(node: Any, *subtypes: Any) -> Iterable[Any]:
    """The ALTER TABLE commands of ``node`` with one of ``subtypes`` (none if not ALTER TABLE)."""
    from pglast import ast, enums

    if not isinstance(node, ast.AlterTableStmt) or node.objtype != enums.ObjectType.OBJECT_TABLE:
        return ()
    return [cmd for cmd in node.cmds or () if cmd.subtype in subtypes]
