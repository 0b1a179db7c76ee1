"""A revision took a stronger lock on an existing table than its declared budget (lint --trace-locks).

Anti-pattern: a revision that takes ACCESS EXCLUSIVE on a busy table (or
rewrites it) stops every query on it for as long as it runs.
Best practice: declare ``LOCK_BUDGET = "SHARE ROW EXCLUSIVE"`` (the
strongest lock the revision may take on tables that existed before it) in
the revision, and let ``keyshift lint --trace-locks`` hold it to that on a
real Postgres: the locks are read from pg_locks, rewrites from relfilenode.
"""

from __future__ import annotations

from toolkit.lint_rules import Rule

RULE = Rule(
    id="lock_budget",
    severity="error",
    message="a revision took a lock on an existing table stronger than its LOCK_BUDGET, or rewrote it",
    hint="split the revision into online-safe steps, or raise LOCK_BUDGET with the reason in the revision",
)
