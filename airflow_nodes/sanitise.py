"""Making text from outside safe to print on root's terminal.

A worker's name, a web server's answer, a file name in a DAG folder or a key in a TOML file can hold
escape sequences (ESC [ ... retitles or clears the terminal, or forges a line), line breaks (a forged
second line of output) and bidi overrides (text that reads other than it is). Every output point
passes what it prints through here, so such characters show escaped (ESC as \\x1b) and never act.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; Unicode line and paragraph separators; bidi marks, embeddings, overrides
# and isolates; lone surrogates (a file name's byte that is not UTF-8, as Python reads it), which no
# terminal could be sent
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_BUT_LINES = re.compile("(?![\n\t])" + _UNSAFE.pattern)


def _escape(match: re.Match[str]) -> str:
    return ascii(match.group())[1:-1]  # "\x1b", "\n", "\u202e"


def printable(text: str) -> str:
    """Given one value from outside, return it with every control character, line break and bidi
    control shown escaped (ESC as \\x1b, a newline as \\n): one line that cannot act on a terminal."""
    return _UNSAFE.sub(_escape, text)


def printable_lines(text: str) -> str:
    """Given text of several lines, return it as printable() would, but keep its newlines and tabs."""
    return _UNSAFE_BUT_LINES.sub(_escape, text)


def one_line(text: str, limit: int = 600) -> str:
    """Given a message, return it printable() and at most about `limit` characters: its start (which
    names the option or file) and its end (which says what is wrong), with "…" between."""
    text = printable(text)
    return text if len(text) <= limit else f"{text[: limit - 100]}…{text[-100:]}"
