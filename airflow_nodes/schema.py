"""A tiny schema for our TOML files: one list of fields drives both reading and writing."""

from __future__ import annotations

import json
import posixpath
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_nodes.errors import UserError, clipped

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
# the account ssh logs in as (a DAG source's user@, a join token's master account): it reaches ssh's
# command line, so nothing that could read as an option ("-oProxyCommand=..."); match with fullmatch
LOGIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class Field:
    section: str
    key: str
    attr: str  # dotted attribute path on the object the file describes
    type: type
    check: Callable[[Any, str], None]
    option: str | None = None  # the `airflow-node init` option that sets it, so errors name what was typed
    since: str = ""  # the tool version that added it: files written before may lack it (its default then)

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def get_attr(obj: Any, attr: str) -> Any:
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def dump_toml(obj: Any, schema: tuple[Field, ...], header: str) -> str:
    """Given an object and its schema, return TOML text with one [section] per schema section."""
    lines = [header.rstrip("\n")]
    section = None
    for field in schema:
        if field.section != section:
            section = field.section
            lines += ["", f"[{section}]"]
        value = get_attr(obj, field.attr)
        # JSON string escapes are valid TOML basic-string escapes.
        lines.append(f"{field.key} = {json.dumps(value) if field.type in (str, bool) else value}")
    return "\n".join(lines) + "\n"


def load_toml(text: str, schema: tuple[Field, ...], where: str, tables: tuple[str, ...] = ()) -> dict[str, Any]:
    """Given TOML text, return {attr: value} with every schema check run. Raise UserError naming the key.
    `tables`: sections of names the file chooses (not the schema's), returned as {section: their dict}
    for the caller to check."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{where}: not valid TOML ({exc})") from None
    except (ValueError, RecursionError):  # a 5000-digit integer, arrays nested past any sense
        raise UserError(f"{where}: not TOML that airflow-node could have written") from None
    known = {(f.section, f.key) for f in schema}
    values: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise UserError(f"{where}: {clipped(section)} must be a [section]")
        if section in tables:
            values[section] = table
            continue
        for key in table:
            if (section, key) not in known:
                raise UserError(f"{where}: unknown key {clipped(f'{section}.{key}')}")
    for field in schema:
        try:
            value = data[field.section][field.key]
        except KeyError:
            if field.since:
                continue
            raise UserError(f"{where}: missing key {field.section}.{field.key}") from None
        if type(value) is not field.type:
            raise UserError(f"{where}: {field.section}.{field.key} must be a {field.type.__name__}")
        field.check(value, f"{where}: {field.section}.{field.key}")
        values[field.attr] = value
    return values


def check_all(obj: Any, schema: tuple[Field, ...], where: str) -> None:
    """Run every schema check on an object built in code (from options). Raise UserError naming the key."""
    for field in schema:
        field.check(get_attr(obj, field.attr), f"{where}: {field.section}.{field.key}")


# -- checks shared by our files: (value, where) -> None, raising UserError --------------------


def check_host(value: str, where: str) -> None:
    if not _HOST_RE.match(value):
        raise UserError(f"{where}: {clipped(value)!r} is not a host name or address")


def in_range(low: int, high: int, unit: str = "") -> Callable[[int, str], None]:
    """Return a check that a whole number lies in [low, high]: every number we read or write is bounded
    (a 20-digit one would not even be valid TOML)."""

    def check(value: int, where: str) -> None:
        if not low <= value <= high:
            raise UserError(f"{where}: must be {low} to {high}{unit}, got {clipped(str(value), 20)}")

    return check


check_port = in_range(1, 65535, " (a TCP port)")


def check_name(value: str, where: str) -> None:
    if not _NAME_RE.match(value):
        raise UserError(f"{where}: {clipped(value)!r} is not a valid name (lowercase letters, digits, - and _)")


def check_abs_path(value: str, where: str) -> None:
    """An absolute, normalised path (no "..", "//" or trailing "/") of letters, digits and ._/@+-."""
    if not _PATH_RE.match(value) or posixpath.normpath(value) != value or value.startswith("//"):
        shown = clipped(value)
        raise UserError(f"{where}: {shown!r} must be a normalised absolute path of letters, digits and ._/@+-")
