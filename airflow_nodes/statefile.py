"""Opening the files root acts on (our state, our config) so that no other account can redirect it.

Every such file is opened here: without following a symlink, only if it is a regular file, and only
up to a size limit, so a link to /etc/shadow, a FIFO or a huge file planted by another account gives
one line and exit 2 instead of a read of the wrong file, a hang, or a traceback. The one file read
through links is a secret the operator names (--db-url-file), and only when no other account may
change any part of the way to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from airflow_nodes.errors import UserError
from airflow_nodes.polling import wait_until
from airflow_nodes.trust import first_untrusted

LIMIT = 64 << 20  # bytes; our biggest state file (a DAG release manifest) is well below


def _open_regular(path: Path, flags: int, follow_links: bool = False) -> int:
    """Open path (without following a final symlink unless follow_links); return the fd of a regular
    file. Raise OSError (FileNotFoundError when missing) or UserError when something else is there."""
    no_follow = 0 if follow_links else os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | no_follow | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except (ValueError, UnicodeEncodeError):  # a NUL byte or a lone surrogate in the name
        raise UserError(f"{path!r}: not a usable file name") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise UserError(f"{path}: is a symbolic link; airflow-node does not follow links in its state") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path}: is not a regular file")
    return fd


def read_bytes(path: Path, limit: int = LIMIT, follow_links: bool = False) -> bytes | None:
    """Return the content of one of our files, or None when it does not exist. Raise UserError when it
    is a link (unless follow_links: a file a person named), not a regular file, too large or unreadable."""
    try:
        fd = _open_regular(path, os.O_RDONLY, follow_links)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{path}: larger than {limit} bytes; not a file airflow-node wrote")
    return data


def load_json(path: Path, limit: int = LIMIT) -> object:
    """Return the parsed JSON of one of our state files (None when missing). Raise UserError naming the
    file when it is not JSON we could have written: nested past any sense, or holding a lone surrogate
    (which could never be printed)."""
    text = read_text(path, limit)
    if text is None:
        return None
    try:
        data = json.loads(text)
        json.dumps(data, ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        raise UserError(f"{path}: not JSON that airflow-node wrote; fix or remove it") from None
    return data


def read_text(path: Path, limit: int = LIMIT) -> str | None:
    """read_bytes, decoded as UTF-8. Raise UserError when it is not UTF-8 text."""
    data = read_bytes(path, limit)
    try:
        return None if data is None else data.decode()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def flock_within(fd: int, seconds: float) -> bool:
    """Given a lock file's fd, take an exclusive flock, waiting up to `seconds` for its holder (another
    process may hold it for ever). Return whether we hold it."""

    def taken() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    return wait_until(taken, seconds, 0.1)


@contextlib.contextmanager
def locked_fd(path: Path) -> Iterator[int]:
    """Open (creating, 0600) a lock file without following links or truncating it; yield its fd."""
    try:
        fd = _open_regular(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise UserError(f"{path}: cannot open the lock ({exc.strerror})") from None
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        yield fd
    finally:
        os.close(fd)


SECRET_FILE_LIMIT = 4096  # bytes; a URL, not a document


def read_secret_file(path: Path, option: str) -> str:
    """Return the first line of a file holding a secret (the operator's: links followed, but root's all the
    way). Raise UserError naming the option and the file, never its content."""
    if os.geteuid() == 0 and (untrusted := first_untrusted(path)):
        raise UserError(f"{option}: {untrusted} may be changed by another account than root: root reads a secret "
                        "only through its own directories")  # fmt: skip
    try:
        data = read_bytes(path, SECRET_FILE_LIMIT, follow_links=True)
        text = (data or b"").decode()
    except UserError as exc:
        raise UserError(f"{option}: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{option}: {path} is not UTF-8 text") from None
    if data is None:
        raise UserError(f"{option}: cannot read {path} (no such file)")
    line = text.split("\n", 1)[0].strip()
    if not line:
        raise UserError(f"{option}: {path} must hold one URL on its first line")
    return line
