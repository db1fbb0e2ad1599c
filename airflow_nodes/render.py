"""Rendering templates, and escaping values for each target format in one place.

`%` alone means something different in each format we write: a ConfigParser interpolation in
airflow.cfg, a specifier in systemd units, a Python %-format in supervisor's config, and a newline in
a crontab line. Every value reaches a template through one of the filters below.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from airflow_nodes.errors import UserError

_SYSTEMD_SAFE = re.compile(r"^[A-Za-z0-9_@%$+=:,./-]+$")


def _templates_dir() -> Path:
    try:
        import airflow_nodes.unit_templates as installed
    except ImportError:  # running from a source tree that was not installed
        return Path(__file__).resolve().parent.parent / "unit_templates"
    return Path(installed.__file__).parent


def _no_newline(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise UserError(f"{what}: a value contains a line break: {value[:20]!r}...")
    return value


def escape_cfg(value: Any) -> str:
    """Escape a value for airflow.cfg, which goes through ConfigParser interpolation."""
    return _no_newline(str(value), "airflow.cfg").replace("%", "%%")


def escape_systemd(value: Any) -> str:
    """Escape one word of a unit file setting: specifiers (%) and variable expansion ($)."""
    text = _no_newline(str(value), "systemd unit").replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_SAFE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_command(argv: Iterable[str]) -> str:
    return " ".join(escape_systemd(arg) for arg in argv)


def escape_supervisor(value: Any) -> str:
    """Escape a value for supervisor's config: a mapping becomes KEY="value",... for environment=."""
    if isinstance(value, Mapping):
        return ",".join(f'{key}="{escape_supervisor(val)}"' for key, val in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(_quote_word(escape_supervisor(word)) for word in value)
    text = _no_newline(str(value), "supervisor config")
    if '"' in text:
        raise UserError(f"supervisor config: a value contains a double quote: {text[:20]!r}...")
    return text.replace("%", "%%")


def _quote_word(word: str) -> str:
    return f'"{word}"' if any(ch.isspace() for ch in word) else word


def escape_cron(value: Iterable[str] | str) -> str:
    """Escape a crontab command: an unescaped % ends the command."""
    text = value if isinstance(value, str) else " ".join(_quote_word(word) for word in value)
    return _no_newline(text, "cron entry").replace("%", "\\%")


@functools.cache
def _environment():
    # built on the first render: importing jinja2 costs ~20 ms, which the commands that only import
    # this module's users (health, the gate, the follower) should not pay
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,  # cron ignores a file without its final newline
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    environment.filters.update(
        cfg=escape_cfg,
        systemd=escape_systemd,
        systemd_command=systemd_command,
        supervisor=escape_supervisor,
        cron=escape_cron,
    )
    return environment


def render(template: str, **context: Any) -> str:
    """Render a template from unit_templates/ with StrictUndefined: a missing value fails loudly."""
    return _environment().get_template(template).render(**context)
