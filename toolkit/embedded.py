"""Throwaway places for `keyshift demo`: a server from the local binaries, a scratch database.

initdb and pg_ctl from the newest ``/usr/lib/postgresql/<version>/bin`` (or
``pg_config --bindir``) build a cluster in a fresh temporary directory and
start it on a free port of 127.0.0.1, with its socket in that directory.
Postgres refuses to run as root, so as root the server runs as ``nobody``
(``setpriv``, util-linux), in a directory made for it. The server is stopped
and the directory removed on every exit: normal, error, Ctrl-C or SIGTERM
(the caller turns SIGTERM into SystemExit; see toolkit.demo).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from psycopg import sql
from psycopg.conninfo import make_conninfo

from toolkit import db
from toolkit.errors import EXIT_USAGE, KeyshiftError

UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_S = 60


def bindir() -> Path:
    """The directory holding initdb and pg_ctl: pg_config's, else the newest Debian one."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in path.parent.name.split(".") if p.isdigit())

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    raise KeyshiftError(
        "no database configured and no local Postgres binaries (initdb, pg_ctl) to start one; "
        "give --dsn or DATABASE_URL, or install the server package (apt-get install postgresql)",
        EXIT_USAGE,
    )


def temp_prefix() -> str:
    """Prefix of the demo's temporary directories: the pid tells whose they are."""
    return f"keyshift-demo-{os.getpid()}-"


def free_port() -> int:
    """A port nothing listens on now (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command run as the user the server may run as (root is refused by Postgres)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = env.get("LC_ALL") or "C.UTF-8"
    if os.geteuid() != 0:
        return argv, env
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    setpriv = shutil.which("setpriv")
    if not setpriv:
        raise KeyshiftError(
            "running as root: the embedded Postgres must run as an unprivileged user and setpriv "
            "(util-linux) is missing; install util-linux or give --dsn",
            EXIT_USAGE,
        )
    env.update(HOME="/", USER=entry.pw_name, LOGNAME=entry.pw_name)
    prefix = [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--"]
    return prefix + argv, env


def _run(argv: list[str], what: str, log: Path | None = None) -> None:
    command, env = _as_server_user(argv)
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=START_TIMEOUT_S + 30,
        start_new_session=True,  # Ctrl-C reaches us, not the server: we stop it in order
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        if log and log.exists():
            detail += log.read_text(errors="replace").strip().splitlines()[-3:]
        raise KeyshiftError(
            f"embedded Postgres: {what} failed: {' | '.join(detail[-4:]) or 'no output'}", EXIT_USAGE
        )


@contextlib.contextmanager
def server() -> Iterator[str]:
    """Start a throwaway server; yield the conninfo of its ``postgres`` database; stop and remove it."""
    bins = bindir()
    root = Path(tempfile.mkdtemp(prefix=temp_prefix()))
    data, log = root / "data", root / "server.log"
    started = False
    try:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        root.chmod(0o700)
        initdb = [str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        _run([*initdb, "--no-sync"], "initdb")
        port = free_port()
        # A throwaway cluster: durability settings off; the socket in our directory.
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        started = True
        _run(
            [str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
             "-t", str(START_TIMEOUT_S), "start"],
            "start",
            log,
        )  # fmt: skip
        yield make_conninfo(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    finally:
        if started:
            with contextlib.suppress(KeyshiftError, subprocess.TimeoutExpired):
                _run([str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the scratch database and server are always removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def scratch_database(server_dsn: str, keep: bool, echo: Callable[[str], None]) -> Iterator[str]:
    """A new database on the server, dropped afterwards unless ``keep``."""
    name = f"keyshift_demo_{dt.datetime.now(dt.timezone.utc):%Y%m%d_%H%M%S}_{os.getpid()}"
    ident = sql.Identifier(name)
    with db.connection(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    target = db.with_database(server_dsn, name)
    try:
        yield target
    finally:
        if keep:
            echo(f"kept database {name} ({db.describe_target(target)})")
        else:
            with db.connection(server_dsn, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
