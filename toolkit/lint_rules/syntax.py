"""Rules the linter reports itself: SQL or plpgsql that does not parse, a silence without a reason."""

from __future__ import annotations

from toolkit.lint_rules import Rule

SYNTAX_ERROR = Rule(
    id="syntax_error",
    severity="error",
    message="the script does not parse",
    hint="fix the SQL; nothing after the error was linted",
)

PLPGSQL_SYNTAX = Rule(
    id="plpgsql_syntax",
    severity="error",
    message="a plpgsql body (function or DO block) does not parse",
    hint="fix the body: Postgres would refuse it only when the function is first called",
)

SILENCE_WITHOUT_REASON = Rule(
    id="silence_without_reason",
    severity="error",
    message="a lint silencing comment names no rule or gives no reason",
    hint='write: -- keyshift-lint: ignore=RULE_ID reason="why it is safe here"',
)
