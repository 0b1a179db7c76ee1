"""Jinja2 templates of ``sql/templates/``, rendered with quoting built in.

Identifiers reach SQL only through the ``qi`` filter and literals only
through ``ql``; undefined parameters are errors (StrictUndefined). Every
render is parsed with pglast, plpgsql bodies included, before it is returned.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2
from psycopg import sql

from toolkit.errors import UsageError
from toolkit.parsing import validate
from toolkit.resources import templates_dir

# Postgres truncates identifiers to NAMEDATALEN-1 bytes; two long names could
# then silently collide, so a longer name is refused rather than quoted.
MAX_IDENTIFIER_BYTES = 63
TEMPLATE_SUFFIX = ".sql.j2"


def quote_ident(name: Any) -> str:
    """Quote one identifier (always, so case and odd characters survive)."""
    if not isinstance(name, str) or name == "":
        raise UsageError(f"identifier must be a non-empty string, got {name!r}")
    if "\x00" in name:
        raise UsageError(f"identifier {name!r} contains a NUL byte; rename it")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise UsageError(
            f"identifier {name[:20]!r}... is longer than {MAX_IDENTIFIER_BYTES} bytes; "
            "Postgres would truncate it"
        )
    return sql.Identifier(name).as_string(None)


def _defined(value: Any) -> None:
    """A missing parameter piped into a filter is still a missing parameter."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()


def qi(value: str | Iterable[str]) -> str:
    """Jinja filter: a quoted identifier, or a comma-separated list of them."""
    _defined(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(quote_ident(v) for v in value)
    return quote_ident(value)


def ql(value: Any) -> str:
    """Jinja filter: a SQL literal (text, number, bool, NULL, or an ARRAY of them)."""
    _defined(value)
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "ARRAY[" + ", ".join(ql(v) for v in value) + "]"
    text = str(value)
    if "\x00" in text:
        raise UsageError("a literal cannot contain a NUL byte")
    return sql.Literal(text).as_string(None).strip()


def tag(value: str) -> str:
    """Jinja filter: a short stable tag of a name, usable in a setting name.

    Custom settings (``keyshift.last_token_<tag>``) allow only letters, digits and
    underscores after the prefix; any table name maps to 12 hex digits.
    """
    _defined(value)
    return hashlib.md5(str(value).encode(), usedforsecurity=False).hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def environment(directory: str | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory or str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["qi"] = qi
    env.filters["ql"] = ql
    env.filters["tag"] = tag
    return env


def template_names(directory: Path | None = None) -> list[str]:
    """Every template, by the name render() takes."""
    root = directory or templates_dir()
    return sorted(p.name for p in root.glob(f"*{TEMPLATE_SUFFIX}"))


_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]+(@[0-9]+)?\.sql\.j2$")


def render(template: str, directory: Path | None = None, **params: Any) -> str:
    """Render one template with its parameters and return validated SQL.

    ``template`` may omit the ``.sql.j2`` suffix. A missing parameter, an
    unquotable identifier or SQL that does not parse is a KeyshiftError that
    names the template.
    """
    name = template if template.endswith(TEMPLATE_SUFFIX) else template + TEMPLATE_SUFFIX
    if not _TEMPLATE_NAME.match(name):
        raise UsageError(f"template name {template!r} is not of the form name[@N].sql.j2")
    env = environment(str(directory) if directory else None)
    try:
        text = env.get_template(name).render(**params)
    except jinja2.TemplateNotFound:
        known = ", ".join(template_names(directory)) or "none"
        raise UsageError(f"no template {name}; known templates: {known}") from None
    except jinja2.UndefinedError as exc:
        raise UsageError(f"template {name}: {exc.message}; pass it with --param") from None
    except UsageError as exc:
        raise UsageError(f"template {name}: {exc.message}") from None
    validate(text, origin=f"template {name} (rendered)")
    return text
