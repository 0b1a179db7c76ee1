"""DDL on an existing table without a lock_timeout set earlier in the same script.

Anti-pattern: ALTER TABLE waits for its lock behind a long transaction, and
every later query on the table queues behind the ALTER: an outage.
Best practice: SET [LOCAL] lock_timeout first; retry on timeout.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from toolkit.lint_rules import Rule, ScriptState
from toolkit.parsing import table_locks


def check(node: Any, state: ScriptState) -> Iterable[str]:
    if state.lock_timeout:
        return
    for lock in table_locks(node):
        if state.is_existing(lock.table):
            yield f"{lock.mode} on {lock.table} ({lock.what}) with no lock_timeout"
            return


RULE = Rule(
    id="missing_lock_timeout",
    severity="error",
    message="DDL on an existing table without a lock_timeout set earlier in the script",
    hint="SET LOCAL lock_timeout = '5s' before it (revisions: migrate.set_timeouts()) and retry on timeout",
    check=check,
)
