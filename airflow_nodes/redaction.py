"""Keeping secrets out of everything we print: diffs, errors, probe output.

Two ways: the secrets we know (`redact`, every form they take in our files), and the secrets a text
holds that we do not know (`redact_secret_values`, as in an old or hand-edited airflow.cfg shown in a
diff). Those are found by what they are, not by a list of names: the value of every key that names a
password, secret, token, key or credential, in any section and any file (smtp_password,
[ldap] bind_password, AIRFLOW__CORE__FERNET_KEY=); such keys inside a value too (a token in
[secrets] backend_kwargs, JSON or not; ?password= in a URL); and the password of every URL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

REDACTED = "***"
# a key that names one of these holds a secret (flower_basic_auth holds user:password); "key" only as
# a word of the name (fernet_key, AIRFLOW__CORE__FERNET_KEY), not inside one (systemd's KeyringMode=)
_SECRET_WORDS = r"pass(?:word|wd|phrase)|secret|token|credential|basic_auth|api_?key|(?<![a-z])key(?![a-z])"
_SECRET_NAME = re.compile(_SECRET_WORDS, re.IGNORECASE)
# a line `key = value` (or `key: value`, which airflow.cfg's ConfigParser reads too)
_ASSIGNMENT = re.compile(r"^(?P<lead>\s*(?P<key>[A-Za-z0-9_.-]+)\s*[=:]\s*)(?P<value>.*)$")
# a secret-named key inside a value: "token": "s.x" (JSON), 'token': 'x', token=x (kwargs, a query,
# Environment=); a colon only after a quoted key, so prose ("the secrets: keep them") is left alone.
# Names are bounded and start where a name starts, so a 1 MB line takes linear time.
_NAME = rf"[A-Za-z0-9_.-]{{0,80}}(?:{_SECRET_WORDS})[A-Za-z0-9_.-]{{0,80}}"
_SECRET_PAIR = re.compile(
    rf"""(?<![A-Za-z0-9_./-])(?=["'A-Za-z0-9_.-])(?P<lead>(?:(["']){_NAME}\2\s*[:=]|{_NAME}\s*=)\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s"',;&(){}\[\]]+)""",
    re.IGNORECASE,
)
_URL = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://\S+")


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """Return every form a secret takes in our files (raw, URL-quoted, %-escaped), longest first."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        for form in (secret, quote(secret, safe=""), json.dumps(secret)[1:-1]):  # raw, URL, TOML string
            forms.update((form, form.replace("%", "%%"), form.replace("%", "%25")))
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Given text and the secrets it may contain, return it with each secret replaced by ***."""
    for form in secret_forms(secrets):
        text = text.replace(form, REDACTED)
    return text


def url_password(url: str) -> str | None:
    """Return the (decoded) password of a URL, or None. Works on text no parser accepts too."""
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    password = userinfo.partition(":")[2] if at else ""
    return unquote(password) if password else None


def redact_url(url: str) -> str:
    """Return the URL with its password replaced by ***, for messages and output.

    Works on the text, not on a parse, so a URL that does not parse is redacted too: everything
    between "user:" and the last "@" goes.
    """
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostinfo = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url if sep or "@" not in url else REDACTED
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{REDACTED}@{hostinfo}"


def _unquoted(raw: str) -> str:
    """Given a raw value, return it without its quotes and airflow.cfg's %% escape."""
    value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'" else raw
    return value.replace("%%", "%")


def _secrets_of_line(line: str) -> set[str]:
    """Given one line of a config text, return the secrets it holds, decoded."""
    match = _ASSIGNMENT.match(line)
    if match and _SECRET_NAME.search(match["key"]):
        value = _unquoted(match["value"].rstrip())
        return {value.rpartition(":")[2] if "basic_auth" in match["key"].lower() else value} - {""}
    found = {_unquoted(pair["value"]) for pair in _SECRET_PAIR.finditer(line)}
    found |= {url_password(url.group().replace("%%", "%")) or "" for url in _URL.finditer(line)}
    return found - {""}


def _redacted_line(line: str) -> str:
    """Given one line of a config text (no newline), return it with every secret it holds as ***."""
    match = _ASSIGNMENT.match(line)
    if match and _SECRET_NAME.search(match["key"]):
        return match["lead"] + REDACTED

    def pair(found: re.Match[str]) -> str:
        quote = found["value"][0] if found["value"][0] in "\"'" else ""
        return f"{found['lead']}{quote}{REDACTED}{quote}"

    return _URL.sub(lambda url: redact_url(url.group()), _SECRET_PAIR.sub(pair, line))


def secret_values_in(text: str) -> set[str]:
    """Return the secrets a config text holds, decoded (so airflow.cfg and the cluster file compare):
    values of secret-named keys, also inside values, and URL passwords."""
    return set().union(*map(_secrets_of_line, text.splitlines()))


def redact_secret_values(text: str, before: set[str] | None = None) -> str:
    """Return text with every secret it holds replaced by *** (see the module's docstring). Given the
    secrets an earlier version held (`before`), a line with a secret not among them shows as changed."""
    lines = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        changed = before is not None and bool(_secrets_of_line(body) - before)
        lines.append(_redacted_line(body) + (" (changed)" if changed else "") + line[len(body) :])
    return "".join(lines)
