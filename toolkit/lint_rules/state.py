"""What a script has done so far, as the rules need it: tables created, lock_timeout, CHECKs validated.

The linter calls :func:`update_state` after each statement (plpgsql bodies
included); rules read :class:`ScriptState` before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, enums

from toolkit.parsing import relation_name


@dataclass
class ScriptState:
    """What a script has done before the statement being checked.

    ``created`` holds the tables created earlier in the same script (new, so
    empty and unseen by running code); every other table is an existing one,
    possibly large and busy. In a function body, every table not created in
    the body is existing: the function runs later, on a live database.
    """

    created: set[str] = field(default_factory=set)
    lock_timeout_session: bool = False
    lock_timeout_local: bool = False
    in_transaction: bool = False
    # constraint name -> (table, column) of CHECK (column IS NOT NULL) NOT VALID seen earlier
    pending_not_null_checks: dict[str, tuple[str, str]] = field(default_factory=dict)
    # (table, column) proven NOT NULL by a validated CHECK
    proven_not_null: set[tuple[str, str]] = field(default_factory=set)

    def is_existing(self, table: str) -> bool:
        """True unless the table was created earlier in this script (schema optional)."""
        bare = table.rsplit(".", 1)[-1]
        return not any(t == table or t.rsplit(".", 1)[-1] == bare for t in self.created)

    @property
    def lock_timeout(self) -> bool:
        return self.lock_timeout_local or self.lock_timeout_session


def _setting_value(node: Any) -> str | None:
    arg = node.args[0] if node.args else None
    value = getattr(arg, "val", None)
    if value is None:
        return None
    return str(getattr(value, "sval", None) or getattr(value, "ival", 0))


def _set_lock_timeout(state: ScriptState, value: str | None, local: bool) -> None:
    on = value is not None and value.strip() not in ("0", "")
    if local:
        state.lock_timeout_local = on
    else:
        state.lock_timeout_session = on


def _set_config_calls(node: Any) -> Iterable[tuple[str, str, bool]]:
    """SELECT set_config('lock_timeout', '2s', true) (plpgsql: PERFORM set_config(...))."""
    if not isinstance(node, ast.SelectStmt):
        return
    for target in node.targetList or ():
        call: Any = target.val
        if isinstance(call, ast.FuncCall) and call.funcname and call.funcname[-1].sval == "set_config":
            args = [getattr(getattr(a, "val", None), "sval", None) for a in call.args or ()]
            local = getattr(getattr(call.args[-1], "val", None), "boolval", False) if call.args else False
            if len(args) == 3 and args[0] and args[1] is not None:
                yield args[0], args[1], bool(local)


def update_state(node: Any, state: ScriptState) -> None:
    """Record what a statement did that later rules depend on."""
    if isinstance(node, (ast.CreateStmt, ast.CreateTableAsStmt)):
        created: Any = node
        rel = created.relation if isinstance(node, ast.CreateStmt) else created.into.rel
        state.created.add(relation_name(rel))
    elif isinstance(node, ast.VariableSetStmt) and node.name == "lock_timeout":
        value = _setting_value(node) if node.kind == enums.VariableSetKind.VAR_SET_VALUE else None
        _set_lock_timeout(state, value, bool(node.is_local))
    elif isinstance(node, ast.TransactionStmt):
        kind = enums.TransactionStmtKind
        if node.kind in (kind.TRANS_STMT_BEGIN, kind.TRANS_STMT_START):
            state.in_transaction = True
        elif node.kind in (kind.TRANS_STMT_COMMIT, kind.TRANS_STMT_ROLLBACK):
            state.in_transaction = False
            state.lock_timeout_local = False
    elif isinstance(node, ast.AlterTableStmt) and node.objtype == enums.ObjectType.OBJECT_TABLE:
        _update_constraints(node, state)
    for name, value, local in _set_config_calls(node):
        if name == "lock_timeout":
            _set_lock_timeout(state, value, local)


def _not_null_column(con: Any) -> str | None:
    expr = con.raw_expr
    if (
        isinstance(expr, ast.NullTest)
        and expr.nulltesttype == enums.NullTestType.IS_NOT_NULL
        and isinstance(expr.arg, ast.ColumnRef)
    ):
        column: Any = expr.arg
        return str(column.fields[-1].sval)
    return None


def _update_constraints(node: Any, state: ScriptState) -> None:
    table = relation_name(node.relation)
    for cmd in node.cmds or ():
        con = cmd.def_
        if cmd.subtype == enums.AlterTableType.AT_AddConstraint and isinstance(con, ast.Constraint):
            column = _not_null_column(con) if con.contype == enums.ConstrType.CONSTR_CHECK else None
            if column and con.skip_validation and con.conname:
                state.pending_not_null_checks[con.conname] = (table, column)
            elif column and not con.skip_validation:
                state.proven_not_null.add((table, column))
        elif cmd.subtype == enums.AlterTableType.AT_ValidateConstraint:
            proven = state.pending_not_null_checks.get(cmd.name)
            if proven:
                state.proven_not_null.add(proven)


def function_state(node: Any) -> ScriptState:
    """A function body runs later, with the function's own SET options."""
    state = ScriptState()
    for opt in node.options or ():
        if (
            opt.defname == "set"
            and isinstance(opt.arg, ast.VariableSetStmt)
            and opt.arg.name == "lock_timeout"
        ):
            _set_lock_timeout(state, _setting_value(opt.arg), local=True)
    return state
