"""CREATE INDEX CONCURRENTLY IF NOT EXISTS.

Anti-pattern: a concurrent build that failed leaves an INVALID index behind;
the re-run sees the name, skips the build and reports success, and the
index is never used (and a unique one enforces nothing it promised).
Best practice: drop an invalid index first (DROP INDEX CONCURRENTLY IF
EXISTS when indisvalid is false), or build without IF NOT EXISTS.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pglast import ast

from toolkit.lint_rules import Rule, ScriptState


def check(node: Any, state: ScriptState) -> Iterable[str]:
    if isinstance(node, ast.IndexStmt) and node.concurrent and node.if_not_exists:
        yield f"index {node.idxname or '(unnamed)'}: a re-run keeps an INVALID index from a failed build"


RULE = Rule(
    id="concurrently_if_not_exists",
    severity="error",
    message="CREATE INDEX CONCURRENTLY IF NOT EXISTS silently keeps an INVALID index left by a failed build",
    hint="drop the index first when pg_index.indisvalid is false, or omit IF NOT EXISTS",
    check=check,
)
