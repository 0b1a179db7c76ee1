"""The CLI's contract: versions, status, one-line errors with exit codes, masked passwords."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from toolkit import __version__, migrate

KEYSHIFT = [sys.executable, "-m", "toolkit"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point, in a subprocess: what an operator sees."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    full_env.update(env or {})
    return subprocess.run([*KEYSHIFT, *args], capture_output=True, text=True, env=full_env, timeout=60)


def test_version(cli: Callable) -> None:  # type: ignore[type-arg]
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"keyshift, version {__version__}"


def test_status_json_on_a_database_at_head(cli: Callable, head_dsn: str) -> None:  # type: ignore[type-arg]
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        conn.execute("SELECT keyshift.define_setting('test.flag', 'bool', 'false', 'a test flag')")
    result = cli("status", "--json", dsn=head_dsn)
    assert result.exit_code == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["revision"] == migrate.script().get_current_head()
    flag = next(s for s in state["settings"] if s["key"] == "test.flag")
    assert (flag["value"], flag["kind"], flag["description"]) == ("false", "bool", "a test flag")


def test_status_on_an_empty_database_says_what_to_do(cli: Callable, empty_dsn: str) -> None:  # type: ignore[type-arg]
    result = cli("status", dsn=empty_dsn)
    assert result.exit_code == 2
    assert "no keyshift control schema" in result.stderr
    assert "alembic upgrade head" in result.stderr


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://alice:Sup3rS3cret@127.0.0.1:1/x",  # nothing listens on port 1
        "host=127.0.0.1 port=1 user=alice password=Sup3rS3cret dbname=x",
    ],
)
def test_unreachable_dsn_is_one_line_exit_2_and_masks_the_password(dsn: str) -> None:
    proc = run("status", "--dsn", dsn)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("keyshift: error: cannot connect to host=127.0.0.1 port=1 dbname=x user=alice")
    assert "Sup3rS3cret" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_database_url_and_pgpassword_are_used_and_masked() -> None:
    proc = run(
        "status", env={"DATABASE_URL": "postgresql+psycopg://bob@127.0.0.1:1/y", "PGPASSWORD": "HushHush"}
    )
    assert proc.returncode == 2
    assert "user=bob" in proc.stderr and "dbname=y" in proc.stderr
    assert "HushHush" not in proc.stderr


def test_libpq_environment_is_used(head_dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(head_dsn)
    proc = run(
        "status",
        "--json",
        env={
            "PGHOST": str(params["host"]),
            "PGPORT": str(params["port"]),
            "PGUSER": str(params["user"]),
            "PGDATABASE": str(params["dbname"]),
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["database"] == params["dbname"]


def test_malformed_dsn_is_a_usage_error_that_does_not_echo_it() -> None:
    proc = run("status", "--dsn", "postgresql://x:Pw0rd@[broken")
    assert proc.returncode == 2
    assert "Pw0rd" not in proc.stderr
    assert proc.stderr.startswith("keyshift: error: the connection string given by --dsn is not valid")


def test_render_cli_prints_validated_sql_and_rejects_bad_params(cli: Callable) -> None:  # type: ignore[type-arg]
    assert cli("render", "--list").exit_code == 0
    bad = cli("render", "whatever", "--param", "novalue")
    assert bad.exit_code == 2
    assert "is not NAME=VALUE" in bad.stderr


def test_keyshift_db_runs_alembic_on_the_packaged_revisions(empty_dsn: str) -> None:
    proc = run("db", "--dsn", empty_dsn, "upgrade", "head")
    assert proc.returncode == 0, proc.stderr
    proc = run("db", "--dsn", empty_dsn, "current")
    assert "(head)" in proc.stdout
    assert run("db", "history").returncode == 0


def test_alembic_cli_unreachable_server_is_one_line_exit_2(tmp_path: Path) -> None:
    alembic = shutil.which("alembic", path=str(Path(sys.executable).parent))
    assert alembic
    proc = subprocess.run(
        [
            alembic,
            "-c",
            str(Path(__file__).parents[1] / "alembic.ini"),
            "-x",
            "dsn=postgresql://u:TopSecret@127.0.0.1:1/x",
            "upgrade",
            "head",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("INFO")]
    assert len(errors) == 1 and errors[0].startswith("alembic: error: cannot connect to")
    assert "TopSecret" not in proc.stderr
