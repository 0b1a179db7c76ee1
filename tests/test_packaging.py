"""An installed wheel carries the revisions, SQL and checks, and alembic finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_revisions_sql_and_runs_alembic_from_the_package(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
            ".mypy_cache",
            ".ruff_cache",
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = (tmp_path / "dist").glob("keyshift-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for repo_file in [
        *REPO.glob("alembic/versions/*.py"),
        *REPO.glob("sql/**/*.sql*"),
        *REPO.glob("checks/*.sql"),
        REPO / "alembic/env.py",
        REPO / "alembic/alembic.ini",
    ]:
        assert f"toolkit/{repo_file.relative_to(REPO)}" in names, repo_file

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", "import toolkit.resources as r; print(r.alembic_dir())"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == str(site / "toolkit" / "alembic")
    history = subprocess.run(
        [sys.executable, "-m", "toolkit", "db", "history"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert history.returncode == 0, history.stderr
    assert "-> legacy_baseline" in history.stdout and "legacy_baseline -> control_schema" in history.stdout
