"""Where keyshift's SQL, revisions and checks live, installed or in a checkout.

A wheel ships the repository's top-level ``sql/``, ``alembic/`` and ``checks/``
folders inside the package (``toolkit/sql`` ...; see setup.cfg). A checkout or
an editable install has them beside ``toolkit/``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder ``sql``, ``alembic`` or ``checks``, wherever this install keeps it."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"keyshift resource folder {name!r} not found near {_PACKAGE}")


def sql_dir() -> Path:
    return resource_dir("sql")


def templates_dir() -> Path:
    return resource_dir("sql") / "templates"


def alembic_dir() -> Path:
    return resource_dir("alembic")


def checks_dir() -> Path:
    return resource_dir("checks")
