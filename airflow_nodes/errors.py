"""Error types that carry a message meant for a human, not a traceback."""

from __future__ import annotations

# how the CLI begins an error line on stderr (a master's gate answers a worker with such a line)
ERROR_PREFIX = "airflow-node: "


class AboutError(Exception):
    """An error said of something: the option, file or key it is `about`, and the `detail` of what is
    wrong with it. Printed as "ABOUT: DETAIL", or DETAIL alone when it is about nothing in particular.

    The older form, one string "ABOUT: DETAIL" (what most raise sites still pass), is read the same way:
    `about` is what comes before its first ": ". Either way str(error) is exactly the text given.
    """

    def __init__(self, detail: str, about: str | None = None) -> None:
        if about is None:
            head, separator, tail = detail.partition(": ")
            if separator:
                about, detail = head, tail
        self.about = about
        self.detail = detail
        super().__init__(f"{about}: {detail}" if about is not None else detail)


class UserError(AboutError):
    """Bad input: an option, a file or the host is not what we need.

    The message is one line that names the option or file (`about`). The CLI prints it and exits 2.
    """

    def about_instead(self, about: str) -> UserError:
        """Return the same error said of another option: the one the user typed, where the check that
        raised it knew the value by another name (a key of the cluster file, another command's option)."""
        return UserError(self.detail, about=about)


class OperationError(AboutError):
    """Something outside our control failed (a command, the network). The CLI exits 1."""


def clipped(value: str, limit: int = 60) -> str:
    """Given a value an error quotes, return it whole if short, else its first `limit` characters and
    "…": a 900 KB value in a file makes an error line of normal length, not a 900 KB one."""
    return value if len(value) <= limit else value[:limit] + "…"
