"""Pre-flight checks on a real Postgres: each check seen passing on a healthy database and
failing on one made to violate it; the runner (read-only, timeouts, user checks, headers);
the command's output and exit codes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.legacy import make_legacy_db, seed_registry
from toolkit import preflight
from toolkit.errors import KeyshiftError, UsageError
from toolkit.resources import checks_dir

PID = os.getpid()


def run_one(dsn: str, check_id: str, step: str = "all", **kw: Any) -> preflight.Result:
    with psycopg.connect(dsn, autocommit=True) as conn:
        report = preflight.run(conn, step, only=[check_id], **kw)
    (result,) = report.results
    return result


def set_settings(dsn: str, settings: dict[str, str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for key, value in settings.items():
            conn.execute("SELECT keyshift.set_setting(%s, %s, 'test')", (key, value))


@contextmanager
def holding(dsn: str, statements: list[str]) -> Iterator[psycopg.Connection[Any]]:
    """A second session that runs ``statements`` in a transaction it keeps open."""
    conn = psycopg.connect(dsn)
    try:
        for statement in statements:
            conn.execute(statement)
        yield conn
    finally:
        conn.rollback()
        conn.close()


def failed_concurrent_build(conn: psycopg.Connection[Any]) -> None:
    """An INVALID index, the way production gets one: a unique build that meets duplicates."""
    conn.execute("CREATE TABLE public.dupes (v integer)")
    conn.execute("INSERT INTO public.dupes VALUES (1), (1)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY dupes_v_key ON public.dupes (v)")


SLOT = f"ks_t_preflight_{PID}"

# One case per check: the revision of a healthy database, the step, what makes it
# violate the check (SQL, a function, settings, statements a second session holds
# open), and a subset of one violation row expected.
CASES: list[dict[str, Any]] = [
    dict(
        check="server_version_supported",
        settings={"preflight.min_server_version_num": "990000"},
        expect={"minimum": 990000},
    ),
    dict(
        check="required_extensions_available",
        settings={"preflight.required_extensions": "plpgsql, btree_gist, no_such_extension"},
        expect={"extension": "no_such_extension"},
    ),
    dict(
        check="legacy_schema_contract",
        revision="legacy_baseline",
        setup="ALTER TABLE trading.positions ALTER COLUMN quantity TYPE integer;"
        " ALTER TABLE market.subscriptions DROP COLUMN mode",
        expect={"table": "trading.positions", "column": "quantity", "problem": "type differs"},
    ),
    dict(
        check="alembic_revision_known",
        setup="UPDATE keyshift.alembic_version SET version_num = 'from_another_branch'",
        expect={"revision": "from_another_branch"},
    ),
    dict(
        check="alembic_at_head",
        revision="key_columns",
        clean_revision="head",
        expect={"revision": "key_columns"},
    ),
    dict(
        check="step_revision_applied",
        revision="instrument_registry",
        clean_revision="head",
        step="backfill",
        expect={"step": "backfill", "revision_needed": "key_columns"},
    ),
    dict(
        check="data_bars_unique_key",
        revision="key_columns",
        clean_revision="head",
        step="dxy_copy",
        expect={"table": "market.data_bars"},
    ),
    dict(check="invalid_indexes", setup=failed_concurrent_build, expect={"index": "dupes_v_key"}),
    dict(
        check="constraints_not_valid",
        setup="ALTER TABLE market.data_bars ADD CONSTRAINT volume_positive CHECK (volume >= 0) NOT VALID",
        expect={"constraint": "volume_positive", "kind": "CHECK"},
    ),
    dict(
        check="long_transactions",
        settings={"preflight.max_transaction_age": "0"},
        hold=["SELECT pg_sleep(0)"],
        expect_hold_pid=True,
    ),
    dict(
        check="idle_in_transaction",
        settings={"preflight.max_idle_in_transaction": "0"},
        hold=["SELECT 1"],
        expect={"state": "idle in transaction"},
        expect_hold_pid=True,
    ),
    dict(
        check="locks_on_step_tables",
        step="key_primary",
        settings={"preflight.max_lock_hold": "0"},
        hold=["LOCK TABLE market.data_bars IN ACCESS SHARE MODE"],
        expect={"table": "market.data_bars", "mode": "AccessShareLock", "granted": True},
        expect_hold_pid=True,
    ),
    dict(
        check="inactive_replication_slots",
        settings={"preflight.max_slot_retained_bytes": "0"},
        setup=f"SELECT pg_create_physical_replication_slot('{SLOT}', true)",
        teardown=f"SELECT pg_drop_replication_slot('{SLOT}')",
        expect={"slot": SLOT, "type": "physical"},
    ),
    dict(
        check="sync_triggers",
        setup="ALTER TABLE market.data_bars DISABLE TRIGGER keyshift_key_sync;"
        " DROP TRIGGER keyshift_key_verify_update ON trading.positions;"
        # A published configuration that disagrees with keyshift.migrated_tables.
        " SELECT keyshift.publish_constant('key_cfg__market__subscriptions', 'token_only:strict:refuse:x')",
        expect={"table": "market.data_bars", "trigger": "keyshift_key_sync", "problem": "disabled"},
        expect_also=[
            {"table": "trading.positions", "trigger": "keyshift_key_verify_update", "problem": "missing"},
            {
                "table": "market.subscriptions",
                "trigger": "keyshift.key_cfg__market__subscriptions()",
                "problem": "configuration out of date: SELECT 'token_only:strict:refuse:x'::text,"
                " the tables say key_primary:strict:refuse:",
            },
        ],
    ),
    dict(
        check="dual_write_flags",
        setup="ALTER TABLE screener.index_memberships DISABLE TRIGGER keyshift_memberships_dual_write",
        expect={"setting": "memberships.dual_write_enabled", "problem": "trigger disabled"},
    ),
    dict(
        # Legacy rows written before the key sync trigger existed, one token never mapped.
        check="unmapped_tokens",
        revision=lambda new_db: make_legacy_db(new_db, bars_tokens=(101, 102, 103, 999)),
        clean_revision=make_legacy_db,
        step="backfill",
        expect={"table": "market.data_bars", "unmapped_tokens": 1, "rows": 200, "sample_tokens": "999"},
    ),
    dict(
        check="dead_letter_backlog",
        settings={"preflight.max_open_dead_letters": "0"},
        setup="SELECT keyshift.dead_letter('market.data_bars', 'INSERT', '{\"ts\": 1}', '{}', 'test letter')",
        expect={"source": "market.data_bars", "open_letters": 1},
    ),
    dict(
        check="sequence_exhaustion",
        setup="CREATE TABLE public.orders (id serial PRIMARY KEY);"
        " SELECT setval('public.orders_id_seq', 2000000000)",
        expect={"sequence": "public.orders_id_seq", "column": "public.orders.id", "max_value": 2147483647},
    ),
    dict(
        # Only a threshold can put a test database near wraparound: the check runs, the age is real.
        check="xid_wraparound",
        settings={"preflight.max_xid_age": "1"},
        expect={"threshold": 1},
    ),
    dict(
        check="fk_without_index",
        revision="control_schema",
        setup="CREATE TABLE public.parent (id integer PRIMARY KEY);"
        " CREATE TABLE public.child (id integer PRIMARY KEY, parent_id integer REFERENCES public.parent)",
        expect={"table": "public.child", "columns": "parent_id"},
    ),
]


def _run_sql(dsn: str, setup: str | Callable[[psycopg.Connection[Any]], None]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if callable(setup):
            setup(conn)
        else:
            conn.execute(setup)


@pytest.mark.parametrize("case", CASES, ids=[c["check"] for c in CASES])
def test_check_passes_on_a_healthy_database_and_fails_on_one_that_violates_it(
    case: dict[str, Any], new_db: Callable[..., str]
) -> None:
    revision = case.get("revision", "head")
    step = case.get("step", "all")

    def make(revision: str | Callable[..., str]) -> str:
        return revision(new_db) if callable(revision) else new_db(revision)

    clean = make(case.get("clean_revision", revision))
    assert run_one(clean, case["check"], step).status == "pass"

    dsn = clean if "clean_revision" not in case else make(revision)
    if "settings" in case:
        set_settings(dsn, case["settings"])
    if "settings" in case and ("setup" in case or "hold" in case):
        assert run_one(dsn, case["check"], step).status == "pass", "a threshold alone is no violation"
    if "setup" in case:
        _run_sql(dsn, case["setup"])
    try:
        with holding(dsn, case.get("hold", [])) as other:
            other_pid = other.info.backend_pid
            result = run_one(dsn, case["check"], step)
    finally:
        if "teardown" in case:
            _run_sql(dsn, case["teardown"])
    assert result.status == "fail", result
    assert result.violations == len(result.rows) >= 1
    for expected in (case.get("expect", {}), *case.get("expect_also", [])):
        if expected:
            assert any(expected.items() <= row.items() for row in result.rows), (expected, result.rows)
    if case.get("expect_hold_pid"):
        assert other_pid in [row["pid"] for row in result.rows]


def test_prepared_transactions_and_replication_lag_pass_on_a_healthy_server(head_dsn: str) -> None:
    # Violating them needs max_prepared_transactions > 0 and a streaming standby,
    # which the shared test server does not have; their SQL runs and passes here.
    for check in ("prepared_transactions", "replication_lag"):
        assert run_one(head_dsn, check).status == "pass"


def test_unmapped_tokens_counts_only_the_rows_outside_a_tokens_validity_periods(
    new_db: Callable[..., str],
) -> None:
    # Bars every minute from 2025-12-31 22:00 for 200 minutes: 120 before 2026-01-01 00:00, 80 from it.
    # 104 is mapped only from 00:00 (valid_from is inclusive), 105 only until 00:00 (valid_to is
    # exclusive), 999 never; 101 changes instrument at 00:00 and stays mapped throughout.
    dsn = make_legacy_db(new_db, bars_tokens=(101, 102, 104, 105, 999))
    _run_sql(
        dsn,
        "INSERT INTO instrument_registry.instruments (instrument_key, symbol, exchange, instrument_type)"
        " VALUES ('CCC_NSE_EQUITY', 'CCC', 'NSE', 'EQUITY'), ('DDD_NSE_EQUITY', 'DDD', 'NSE', 'EQUITY');"
        " INSERT INTO instrument_registry.broker_instrument_tokens"
        " (broker, instrument_token, instrument_key, valid_from, valid_to) VALUES"
        " ('zerodha', 104, 'CCC_NSE_EQUITY', '2026-01-01 00:00:00+00', NULL),"
        " ('zerodha', 105, 'DDD_NSE_EQUITY', '-infinity', '2026-01-01 00:00:00+00')",
    )
    result = run_one(dsn, "unmapped_tokens", "backfill")
    assert result.status == "fail", result
    assert result.rows == [
        {
            "table": "market.data_bars",
            "broker": "zerodha",
            "unmapped_tokens": 3,
            "rows": 120 + 80 + 200,
            "sample_tokens": "104, 105, 999",
        }
    ]


def test_null_keys_fail_until_the_backfill_has_given_every_row_its_key(
    new_db: Callable[..., str], cli: Any
) -> None:
    dsn = make_legacy_db(new_db)
    result = run_one(dsn, "null_keys", "key_primary")
    assert result.status == "fail"
    by_table = {row["table"]: row["rows_without_key"] for row in result.rows}
    assert by_table == {"market.data_bars": 600, "market.subscriptions": 3, "trading.positions": 2}
    assert cli("backfill", "--all", dsn=dsn).exit_code == 0
    assert run_one(dsn, "null_keys", "key_primary").status == "pass"
    assert run_one(dsn, "unmapped_tokens", "backfill").status == "pass"


def test_role_without_privileges_fails_role_privileges_and_is_warned_it_cannot_see_sessions(
    head_dsn: str,
) -> None:
    role = f"ks_t_preflight_role_{PID}"
    with psycopg.connect(head_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            # What the checks themselves read, and nothing a step needs.
            admin.execute(sql.SQL("GRANT USAGE ON SCHEMA keyshift TO {}").format(sql.Identifier(role)))
            admin.execute(
                sql.SQL(
                    "GRANT SELECT ON keyshift.settings, keyshift.migrated_tables, keyshift.alembic_version TO {}"
                ).format(sql.Identifier(role))
            )
            dsn = psycopg.conninfo.make_conninfo(head_dsn, user=role)
            backfill = run_one(dsn, "role_privileges", "backfill")
            key_primary = run_one(dsn, "role_privileges", "key_primary")
            visibility = run_one(dsn, "stats_visibility")
            admin.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(role)))
            visible = run_one(dsn, "stats_visibility")
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert backfill.status == "fail", backfill.message
    assert {"object": "market.data_bars", "privilege": "UPDATE", "role": role}.items() <= next(
        r for r in backfill.rows if r["object"] == "market.data_bars" and r["privilege"] == "UPDATE"
    ).items()
    assert {(r["object"], r["privilege"]) for r in key_primary.rows} >= {
        ("market.data_bars", "OWNER"),
        ("keyshift.migrated_tables", "UPDATE"),
    }
    assert visibility.status == "fail" and visible.status == "pass"
    # The superuser that owns everything passes the same checks.
    assert run_one(head_dsn, "role_privileges", "backfill").status == "pass"


def test_every_check_passes_on_a_fresh_database_at_head(head_dsn: str, cli: Any) -> None:
    result = cli("preflight", "--for", "all", "--json", dsn=head_dsn)
    report = json.loads(result.output)
    assert result.exit_code == 0, result.output
    assert {c["id"]: c["status"] for c in report["checks"] if c["status"] != "pass"} == {}
    assert len(report["checks"]) == len(preflight.load())


def test_checks_before_any_revision_run_on_defaults_declared_in_sql(empty_dsn: str, cli: Any) -> None:
    # No keyshift.settings yet: thresholds come from the define_setting calls in sql/.
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        report = preflight.run(conn, "upgrade")
    statuses = {r.id: r.status for r in report.results}
    assert "error" not in statuses.values(), [r.message for r in report.results if r.status == "error"]
    assert statuses["long_transactions"] == "pass" and statuses["legacy_schema_contract"] == "pass"
    assert statuses["dead_letter_backlog"] == "skipped"
    assert preflight.declared_defaults()["preflight.max_transaction_age"] == "5 minutes"
    assert cli("preflight", "--for", "upgrade", dsn=empty_dsn).exit_code == 0


# ---------------------------------------------------------------- the command


def test_table_output_and_exit_1_when_an_error_check_fails(head_dsn: str, cli: Any) -> None:
    passed = cli("preflight", dsn=head_dsn)
    assert passed.exit_code == 0, passed.output
    assert "pre-flight for any: passed" in passed.output
    _run_sql(head_dsn, "ALTER TABLE market.data_bars DISABLE TRIGGER keyshift_key_sync")
    failed = cli("preflight", dsn=head_dsn)
    assert failed.exit_code == 1
    line = next(ln for ln in failed.output.splitlines() if ln.startswith("sync_triggers "))
    assert line.split()[1:4] == ["error", "FAIL", "1"] and "ENABLE TRIGGER" in line
    assert "keyshift_key_sync" in failed.output and "FAILED (sync_triggers)" in failed.output


def test_a_failing_warning_check_does_not_fail_the_run(new_db: Callable[..., str], cli: Any) -> None:
    dsn = new_db("key_columns")  # not at head: alembic_at_head warns
    result = cli("preflight", "--json", dsn=dsn)
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["ok"] is True
    assert "alembic_at_head" in report["warnings"] and report["failed"] == []


def test_json_shape(head_dsn: str, cli: Any) -> None:
    _run_sql(head_dsn, "SELECT keyshift.set_setting('preflight.max_open_dead_letters', '0', 't')")
    _run_sql(head_dsn, "SELECT keyshift.dead_letter('memberships', 'INSERT', NULL, '{}', 'test')")
    result = cli("preflight", "--for", "backfill", "--json", dsn=head_dsn)
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert set(report) == {"step", "ok", "failed", "warnings", "checks"}
    assert (
        report["step"] == "backfill" and report["ok"] is False and report["failed"] == ["dead_letter_backlog"]
    )
    check = next(c for c in report["checks"] if c["id"] == "dead_letter_backlog")
    assert set(check) == {
        "id", "severity", "status", "violations", "summary", "remedy", "steps", "file", "seconds",
        "message", "columns", "rows",
    }  # fmt: skip
    assert check["status"] == "fail" and check["violations"] == 1
    assert check["rows"][0]["source"] == "memberships" and check["rows"][0]["open_letters"] == 1
    assert check["columns"][:2] == ["source", "open_letters"]
    ids = {c["id"] for c in report["checks"]}
    assert "unmapped_tokens" in ids and "data_bars_unique_key" not in ids  # backfill's, not dxy_copy's


def test_step_selection_only_and_skip(head_dsn: str, cli: Any) -> None:
    def ids(*args: str) -> set[str]:
        result = cli("preflight", "--json", *args, dsn=head_dsn)
        return {c["id"] for c in json.loads(result.output)["checks"]}

    any_ids = ids()
    assert "long_transactions" in any_ids and "null_keys" not in any_ids and "unmapped_tokens" not in any_ids
    assert ids("--for", "key_primary") == any_ids | {
        "null_keys", "unmapped_tokens", "locks_on_step_tables", "role_privileges", "replication_lag",
        "step_revision_applied",
    }  # fmt: skip
    assert ids("--for", "all") == {c.id for c in preflight.load()}
    assert ids("--only", "null_keys", "--only", "sync_triggers,invalid_indexes") == {
        "null_keys",
        "sync_triggers",
        "invalid_indexes",
    }
    assert ids("--skip", "long_transactions") == any_ids - {"long_transactions"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--for", "bakfill"], "unknown step 'bakfill' for --for; known steps: all, any, backfill"),
        (["--only", "no_such_check"], "unknown check id no_such_check; known checks: "),
        (["--skip", "long_transaction"], "unknown check id long_transaction;"),
        (["--checks-dir", "/nonexistent/dir"], "--checks-dir /nonexistent/dir: not a directory"),
    ],
)
def test_usage_errors_exit_2_with_one_line_before_connecting(args: list[str], message: str, cli: Any) -> None:
    # The DSN points nowhere: a usage error is reported without a connection.
    result = cli("preflight", *args, dsn="host=127.0.0.1 port=1 dbname=nowhere connect_timeout=1")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_unreachable_database_exits_2(cli: Any) -> None:
    result = cli("preflight", dsn="host=127.0.0.1 port=1 dbname=nowhere connect_timeout=1")
    assert result.exit_code == 2 and result.output.startswith(
        "keyshift: error: cannot connect to host=127.0.0.1"
    )


# ---------------------------------------------------------------- user checks and headers

USER_CHECK = """\
-- id: negative_volume
-- severity: error
-- steps: my_step
-- summary: bars with a negative volume
-- remedy: fix the feed that wrote them
-- params: preflight.max_open_dead_letters
select b.instrument_key, b.ts, b.volume
  from market.data_bars b
 where b.volume < 0 and $1::bigint >= 0  -- a threshold bound from the settings
"""


def test_a_check_dropped_into_a_directory_runs_with_no_python_change(
    head_dsn: str, cli: Any, tmp_path: Path
) -> None:
    (tmp_path / "negative_volume.sql").write_text(USER_CHECK)
    (tmp_path / "notes.txt").write_text("not a check")
    args = ("preflight", "--checks-dir", str(tmp_path), "--json")
    clean = cli(*args, "--for", "my_step", dsn=head_dsn)
    assert clean.exit_code == 0, clean.output
    assert "negative_volume" in {c["id"] for c in json.loads(clean.output)["checks"]}
    _run_sql(head_dsn, seed_registry)
    _run_sql(
        head_dsn,
        "INSERT INTO market.data_bars (instrument_token, instrument_key, timeframe, ts, open, high, low, close, volume)"
        " VALUES (102, 'M&M_NSE_EQUITY', '1m', '2026-03-02 10:00+00', 1, 1, 1, 1, -5)",
    )
    failed = cli(*args, "--for", "my_step", dsn=head_dsn)
    assert failed.exit_code == 1
    (check,) = [c for c in json.loads(failed.output)["checks"] if c["id"] == "negative_volume"]
    assert check["rows"] == [
        {"instrument_key": "M&M_NSE_EQUITY", "ts": "2026-03-02T10:00:00+00:00", "volume": -5}
    ]
    # Not asked for: a check of another step does not run.
    assert cli(*args, dsn=head_dsn).exit_code == 0


def test_a_user_check_cannot_reuse_a_shipped_id(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "mine.sql").write_text(USER_CHECK.replace("negative_volume", "invalid_indexes"))
    result = cli("preflight", "--checks-dir", str(tmp_path), dsn="host=127.0.0.1 port=1")
    assert result.exit_code == 2 and "check id 'invalid_indexes' is defined twice" in result.output


GOOD_HEADER = "-- id: x\n-- severity: error\n-- steps: any\n-- summary: s\n-- remedy: r\n"


@pytest.mark.parametrize(
    "text, problem",
    [
        (GOOD_HEADER.replace("-- severity: error\n", ""), "no 'severity:' header line"),
        (GOOD_HEADER.replace("error", "fatal"), "severity 'fatal' is not error or warning"),
        (GOOD_HEADER.replace("-- steps: any", "-- steps: all"), "steps 'all' is not a list of step names"),
        (GOOD_HEADER.replace("-- id: x", "-- id: Bad-Id"), "id 'Bad-Id' is not lower_case_with_underscores"),
        (GOOD_HEADER + "-- sevrity: error\n", "unknown header line 'sevrity'"),
        (GOOD_HEADER + "-- params: not a setting\n", "params not a setting are neither setting keys"),
        (GOOD_HEADER + "select 1; select 2", "exactly one SELECT (found 2 statements)"),
        (GOOD_HEADER + "vacuum market.data_bars", "exactly one SELECT (found 1 statements)"),
        (GOOD_HEADER + "select $2::int", "uses $2 but the header declares 0 params"),
        (GOOD_HEADER + "select from where", "syntax error"),
    ],
)
def test_a_malformed_check_file_is_one_line_naming_the_file(text: str, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.sql"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        preflight.load(tmp_path)
    assert str(path) in caught.value.message and problem in caught.value.message, caught.value.message
    assert "\n" not in caught.value.message


def test_malformed_header_from_the_command_exits_2_with_one_line(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.sql").write_text(GOOD_HEADER.replace("-- remedy: r\n", "") + "select 1")
    result = cli("preflight", "--checks-dir", str(tmp_path), dsn="host=127.0.0.1 port=1")
    assert result.exit_code == 2
    assert result.output == (
        f"keyshift: error: check file {tmp_path / 'bad.sql'}: no 'remedy:' header line; a check starts "
        "with the comment lines -- id:, -- severity: (error|warning), -- steps:, -- summary:, -- remedy: "
        "(optional -- params:, -- requires:), then one SELECT\n"
    )


def test_shipped_checks_all_parse_and_have_distinct_ids() -> None:
    shipped = sorted(checks_dir().glob("*.sql"))
    checks = preflight.load()
    assert len(checks) == len(shipped) >= 20
    assert {c.path for c in checks} == set(shipped)


# ---------------------------------------------------------------- read-only, timeouts, require()


def _user_check(tmp_path: Path, check_id: str, query: str) -> Path:
    (tmp_path / f"{check_id}.sql").write_text(GOOD_HEADER.replace("-- id: x", f"-- id: {check_id}") + query)
    return tmp_path


@pytest.mark.parametrize(
    "query",
    [
        "select keyshift.set_setting('preflight.max_lock_hold', '1 hour', 'a check that writes')",
        "with w as (insert into keyshift.dead_letters (source, operation, payload, reason)"
        " values ('x', 'INSERT', '{}', 'a check that writes') returning id) select * from w",
    ],
    ids=["function-that-writes", "data-modifying-cte"],
)
def test_a_check_that_tries_to_write_fails_and_changes_nothing(
    head_dsn: str, tmp_path: Path, query: str
) -> None:
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        report = preflight.run(
            conn, only=["writes", "invalid_indexes"], checks_dir=_user_check(tmp_path, "writes", query)
        )
        writes, other = sorted(report.results, key=lambda r: r.id != "writes")
        assert writes.status == "error" and "read-only transaction" in writes.message
        assert "25006" in writes.message
        assert other.status == "pass"  # the failed check did not end the others
        assert not report.ok
        assert conn.execute(
            "SELECT value FROM keyshift.settings WHERE key = 'preflight.max_lock_hold'"
        ).fetchone() == ("00:00:10",)
        assert conn.execute("SELECT count(*) FROM keyshift.dead_letters").fetchone() == (0,)


def test_a_check_is_stopped_by_the_statement_timeout(head_dsn: str, tmp_path: Path) -> None:
    set_settings(head_dsn, {"preflight.statement_timeout": "200 milliseconds"})
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        report = preflight.run(
            conn, only=["slow"], checks_dir=_user_check(tmp_path, "slow", "select pg_sleep(30)")
        )
    (slow,) = report.results
    assert slow.status == "error" and "statement timeout" in slow.message and slow.seconds < 5


def test_a_check_does_not_queue_behind_ddl_lock_timeout(head_dsn: str, tmp_path: Path) -> None:
    query = "select 1 from market.data_bars limit 1"
    with holding(head_dsn, ["LOCK TABLE market.data_bars IN ACCESS EXCLUSIVE MODE"]):
        with psycopg.connect(head_dsn, autocommit=True) as conn:
            report = preflight.run(
                conn, only=["reads_bars"], checks_dir=_user_check(tmp_path, "reads_bars", query)
            )
    (result,) = report.results
    assert result.status == "error" and "lock timeout" in result.message and result.seconds < 5


def test_require_raises_exit_1_on_a_failed_error_check_and_returns_the_report_otherwise(
    head_dsn: str,
) -> None:
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        report = preflight.require(conn, "backfill")
        assert report.ok and report.step == "backfill"
        conn.execute("ALTER TABLE trading.positions DISABLE TRIGGER keyshift_key_verify_insert")
        with pytest.raises(KeyshiftError) as caught:
            preflight.require(conn, "backfill")
    assert caught.value.exit_code == 1
    assert caught.value.message.startswith(
        "pre-flight for backfill failed: sync_triggers (sync_triggers: 1 violation"
    )
    assert caught.value.message.endswith("details: keyshift preflight --for backfill")


def test_require_refuses_a_connection_inside_a_transaction(head_dsn: str) -> None:
    with psycopg.connect(head_dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(KeyshiftError) as caught:
            preflight.require(conn, "backfill")
    assert caught.value.exit_code == 2 and "no transaction open" in caught.value.message
