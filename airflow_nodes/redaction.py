"""Keeping secrets out of everything we print: diffs, errors, probe output.

Two ways: the secrets we know (`redact`, every form they take in our files), and the secrets a text
holds that we do not know (`redact_secret_values`: the value of every secret-named key and the
password of every URL, as in an old airflow.cfg shown in a diff).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

REDACTED = "***"
# keys whose whole value is secret, in airflow.cfg and the cluster file
SECRET_KEYS = ("fernet_key", "secret_key", "jwt_secret", "flower_password", "flower_basic_auth", "password")
_ASSIGNMENT = re.compile(r"^(?P<lead>\s*(?P<key>[A-Za-z0-9_.-]+)\s*=\s*)(?P<value>.*?)\s*$")


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


def _secret_of(key: str, raw: str) -> str | None:
    """Given a config line's key and raw value, return the secret it holds (decoded), or None."""
    value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'" else raw
    value = value.replace("%%", "%")  # airflow.cfg's ConfigParser escape
    if key in SECRET_KEYS:
        return (value.rpartition(":")[2] if key == "flower_basic_auth" else value) or None
    if "://" in value:
        return url_password(value)
    return None


def secret_values_in(text: str) -> set[str]:
    """Return the secrets a config text holds, decoded (so airflow.cfg and the cluster file compare):
    values of secret keys and URL passwords."""
    found = set()
    for line in text.splitlines():
        match = _ASSIGNMENT.match(line)
        if match and (secret := _secret_of(match["key"].lower(), match["value"])):
            found.add(secret)
    return found


def redact_secret_values(text: str, before: set[str] | None = None) -> str:
    """Return text with the value of every secret key replaced by *** and every URL redacted. Given the
    secrets an earlier version held (`before`), a secret that is not among them shows as changed."""
    lines = []
    for line in text.splitlines(keepends=True):
        match = _ASSIGNMENT.match(line.rstrip("\n"))
        secret = match and _secret_of(match["key"].lower(), match["value"])
        changed = " (changed)" if secret and before is not None and secret not in before else ""
        if match and match["key"].lower() in SECRET_KEYS:
            line = f"{match['lead']}{REDACTED}{changed}" + ("\n" if line.endswith("\n") else "")
        elif "://" in line:
            line = re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), line)
            line = line.rstrip("\n") + changed + ("\n" if line.endswith("\n") else "")
        lines.append(line)
    return "".join(lines)
