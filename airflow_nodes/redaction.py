"""Keeping secrets out of everything we print: diffs, errors, probe output."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

REDACTED = "***"


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """Return every form a secret takes in our files (raw, URL-quoted, %-escaped), longest first."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        for form in (secret, quote(secret, safe="")):
            forms.update((form, form.replace("%", "%%"), form.replace("%", "%25")))
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Given text and the secrets it may contain, return it with each secret replaced by ***."""
    for form in secret_forms(secrets):
        text = text.replace(form, REDACTED)
    return text
