"""Finding the installed Airflow and the init system, without importing Airflow into our process."""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import defaults, execute
from airflow_nodes.digest import sha256
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import under_root
from airflow_nodes.trust import first_untrusted
from airflow_nodes.urls import bare_host
from airflow_nodes.versions import AirflowVersion, parse_airflow_version

DEFAULT_VENV = defaults.AIRFLOW_VENV

# Runs in the target interpreter. First line: the Airflow version (apache-airflow-core exists only
# on Airflow 3, where apache-airflow is a meta-package; on 2.x apache-airflow holds everything),
# empty if none. Then the installed package set, one normalised "name==version" per line.
_PROBE = """
import importlib.metadata as m, re
version = ""
for name in ("apache-airflow-core", "apache-airflow"):
    try:
        version = m.version(name); break
    except m.PackageNotFoundError:
        pass
print(version)
names = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in m.distributions()}
print("\\n".join(f"{n}=={v}" for n, v in sorted(names.items())))
"""


def probe_interpreter(python: Path, timeout: float = 30) -> tuple[str, list[str]] | None:
    """Return (Airflow version or "", installed packages) of an interpreter, or None if it cannot run."""
    try:
        result = execute.run([python, "-I", "-c", _PROBE], timeout=timeout)
    except OperationError:
        return None
    version, *packages = result.stdout.split("\n")
    return version.strip(), [line for line in packages if line]


def package_set_hash(requirements: list[str]) -> str:
    """Given name==version lines, return a short hash that ignores order and name spelling."""
    normalised = set()
    for name, version in map(parse_pin, requirements):
        if name not in ("pip", "setuptools", "wheel"):  # tooling, not what Airflow runs on
            normalised.add(f"{name}=={version}")
    return sha256("\n".join(sorted(normalised)).encode())[:16]


def parse_pin(line: str) -> tuple[str, str]:
    """Given "Flask_Login==0.6.3", return ("flask-login", "0.6.3"): the name as PEP 503 spells it."""
    name, _, version = line.strip().partition("==")
    return re.sub(r"[-_.]+", "-", name).lower(), version


@dataclass(frozen=True)
class AirflowInstall:
    version: AirflowVersion
    airflow_bin: str
    package_hash: str = ""  # empty when not detected (--airflow-version)


def untrusted_in_venv(python: Path) -> Path | None:
    """Given a venv's interpreter, return the first part of the venv root would run that another account
    may change: the interpreter's path, pyvenv.cfg (it says where the packages are), the site-packages
    directories and the .pth files in them (each line may run code at start-up). None when all are
    root's; not root: None."""
    if os.geteuid() != 0:
        return None
    venv = Path(os.path.abspath(python)).parent.parent
    parts = [python, venv / "pyvenv.cfg"]
    for site in sorted(venv.glob("lib*/python*/site-packages")):
        parts += [site, *sorted(site.glob("*.pth"))]
    return next((bad for part in parts if (bad := first_untrusted(part))), None)


def interpreter_of(airflow_bin: Path, root: Path | None = None) -> Path:
    """Return the Python that runs an `airflow` console script (from its shebang). Raise UserError when
    the script or that Python is not one root may run (see trusted_for_root)."""
    first = ""
    try:
        fd = os.open(airflow_bin, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not make us wait
        with os.fdopen(fd, "rb") as script:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                first = script.readline(512).decode(errors="replace")
    except OSError:
        pass
    python = Path(first[2:].strip().split()[0]) if first.startswith("#!") and "python" in first else None
    python = python or airflow_bin.parent / "python"
    if root is not None and root not in python.parents:  # a node's path: the node lives under --root
        python = under_root(root, str(python))
    for item in (airflow_bin, python):
        bad = untrusted_in_venv(item) if item == python else first_untrusted(item)
        if os.path.lexists(item) and os.geteuid() == 0 and bad:
            raise UserError(f"{item}: {bad} is another account's or others may write it; "
                            "airflow-node will not run it as root")  # fmt: skip
    return python


def _locate_airflow(venv: str | None, airflow_bin: str | None, root: Path | None) -> tuple[Path, str]:
    """Return (airflow executable on the node, the option it came from)."""
    if venv:
        return Path(venv) / "bin" / "airflow", "--venv"
    if airflow_bin:
        return Path(airflow_bin), "--airflow-bin"
    found = shutil.which("airflow") if root is None else None  # our PATH is not a --root node's
    if found:
        return Path(found), "PATH"
    return Path(DEFAULT_VENV) / "bin" / "airflow", "--venv"


def detect_airflow(
    venv: str | None, airflow_bin: str | None, override: str | None, root: Path | None = None
) -> AirflowInstall:
    """Find the airflow executable and its version on the node (under `root`, --root, when given; the
    paths are the node's). Raise UserError naming the option to fix.

    With `override` (--airflow-version) nothing is run: that is how a node is rendered with
    --root on a machine without Airflow.
    """
    executable, option = _locate_airflow(venv, airflow_bin, root)
    if not executable.is_absolute():
        raise UserError(f"{option}: {executable} must be an absolute path")
    if override:
        return AirflowInstall(parse_airflow_version(override), str(executable))
    local = under_root(root, str(executable)) if root is not None else executable
    if not os.access(local, os.X_OK):
        raise UserError(
            f"{option}: no airflow executable at {local}; install Airflow there, "
            "or pass --venv/--airflow-bin, or --airflow-version to render without it"
        )
    python = interpreter_of(local, root)
    probed = probe_interpreter(python)
    if probed is None:
        raise UserError(f"{option}: cannot run {python} to read the Airflow version")
    version, packages = probed
    if not version:
        raise UserError(f"{option}: Airflow is not installed for {python}; pass --airflow-version to override")
    parsed = parse_airflow_version(version, f"{option} (installed Airflow)")
    return AirflowInstall(parsed, str(executable), package_set_hash(packages))


def route_address(host: str) -> str:
    """Return this host's address on its route to `host` (a UDP connect sends no packet), or "" when
    there is none: the address the others most likely reach this node at."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(bare_host(host), 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(address)
            return probe.getsockname()[0]
    except OSError:
        return ""


def installed_package_hash(airflow_bin: str, root: Path | None = None) -> str:
    """The package-set hash of the Airflow install an airflow executable belongs to, or "" (not
    installed, not one root may run)."""
    try:
        local = under_root(root, airflow_bin) if root is not None else Path(airflow_bin)
        probed = probe_interpreter(interpreter_of(local, root))
    except UserError:
        return ""
    return package_set_hash(probed[1]) if probed and probed[0] else ""


def detect_init_system() -> str:
    """systemd when it is PID 1 (as sd_booted() decides), supervisor otherwise."""
    return "systemd" if Path("/run/systemd/system").is_dir() else "supervisor"
