"""`airflow-node install-airflow`: the same pinned Airflow on every node, from a lock file we ship.

Layout: VENV (e.g. /opt/airflow-venv) is a symlink to a release directory beside it,
VENV.releases/airflow-X.Y.Z-pyA.B-HASH. A new release is built and verified in its own directory,
then the symlink is switched with one rename, so a failed install leaves the previous venv
working, and scripts' shebangs (which name the release directory) stay valid.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import execute
from airflow_nodes.atomicfile import replace_symlink
from airflow_nodes.defaults import AIRFLOW_VENV
from airflow_nodes.detect import package_set_hash, parse_pin, probe_interpreter
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import NODE_FILE, NodeSettings
from airflow_nodes.target import Target, check_creatable_dir
from airflow_nodes.trust import first_untrusted, root_only, trusted_for_root

LOCKS_DIR = Path(__file__).resolve().parent / "locks"
_LOCK_NAME = re.compile(r"^airflow-(\d+\.\d+\.\d+)-py(\d+\.\d+)\.txt$")
# What every node of a cluster must run alike, whatever its Python: Airflow, its providers and task
# SDK, and the Celery stack tasks travel through. The rest of a lock may differ by Python line
# (backports, environment markers), so the locks of one Airflow version agree on these only.
_CLUSTER_WIDE = re.compile(r"^(apache-airflow(-.+)?|celery|kombu|billiard|flower|redis)$")
OWN_PINS_NOTE = "its own provider and Celery pins"  # in the first line of such a lock (make-airflow-lock)

# The imports that fail when celery and the celery provider do not fit together (celery 5.7), and
# when the Redis transport cannot load (redis without async-timeout on Python < 3.11.3).
_SMOKE_TEST = (
    "import celery.backends.database, kombu.transport.redis; import airflow.providers.celery.executors.celery_executor"
)


@dataclass(frozen=True)
class Lock:
    airflow_version: str
    python: str  # "3.11"
    path: Path

    def requirements(self) -> list[str]:
        return [line for line in self.path.read_text().splitlines() if line and not line.startswith("#")]

    @property
    def package_hash(self) -> str:
        return package_set_hash(self.requirements())

    @property
    def own_pins(self) -> bool:
        """Whether make-airflow-lock had to resolve this lock apart from the other Pythons' pins."""
        return OWN_PINS_NOTE in self.path.read_text().partition("\n")[0]

    @property
    def python_key(self) -> tuple[int, ...]:
        return tuple(map(int, self.python.split(".")))

    @property
    def cluster_pins(self) -> dict[str, str]:
        """The pins every node of a cluster must share, whatever its Python: {name: version}."""
        return {name: version for name, version in map(parse_pin, self.requirements()) if _CLUSTER_WIDE.match(name)}


def available_locks() -> list[Lock]:
    locks = []
    for path in sorted(LOCKS_DIR.glob("airflow-*.txt")):
        match = _LOCK_NAME.match(path.name)
        if match:
            locks.append(Lock(match.group(1), match.group(2), path))
    return locks


def python_version(python: str) -> str:
    """Return "X.Y" of an interpreter. Raise UserError naming --python if it cannot run."""
    try:
        result = execute.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], timeout=30)
    except OperationError:
        raise UserError(f"--python: cannot run {python}") from None
    return result.stdout.strip()


def find_lock(version: str, python: str) -> Lock:
    """Return the shipped lock for an Airflow version and Python "X.Y". Raise UserError otherwise."""
    locks = available_locks()
    versions = sorted({lock.airflow_version for lock in locks})
    matching = [lock for lock in locks if lock.airflow_version == version]
    if not matching:
        raise UserError(f"--version: no lock file for Airflow {version} (available: {', '.join(versions)})")
    for lock in matching:
        if lock.python == python:
            return lock
    covered = ", ".join(lock.python for lock in matching)
    raise UserError(f"--python: the Airflow {version} lock covers Python {covered}, not {python}")


def lock_with_hash(package_hash: str) -> Lock | None:
    """The shipped lock whose package set has this hash, if any."""
    return _locks_by_hash().get(package_hash)


@functools.cache
def _locks_by_hash() -> dict[str, Lock]:
    return {lock.package_hash: lock for lock in available_locks()}


def compare_package_sets(here: str, master: str) -> tuple[bool, str]:
    """Given the hashes of a node's and the master's package sets, return whether they may run in one
    cluster (the same set, or the shipped locks of one Airflow version for two Pythons that agree on
    Airflow, providers and Celery) and a phrase that says how they compare."""
    if here == master:
        return True, f"same set as the master ({here})"
    here_lock, master_lock = lock_with_hash(here), lock_with_hash(master)
    if not (here_lock and master_lock and here_lock.airflow_version == master_lock.airflow_version):
        return False, f"set {here} differs from the master's {master} (install from the same lock)"
    ours, theirs = here_lock.cluster_pins, master_lock.cluster_pins
    differing = sorted(set(ours.items()) ^ set(theirs.items()))
    if not differing:
        return True, (f"the lock for Python {here_lock.python}: same Airflow, providers and Celery as the "
                      f"master's (Python {master_lock.python})")  # fmt: skip
    name = differing[0][0]
    return False, (f"the lock for Python {here_lock.python} has {name} {ours.get(name, 'missing')}, the "
                   f"master's (Python {master_lock.python}) {theirs.get(name, 'missing')}")  # fmt: skip


def reference_constraints(version: str, python: str) -> str:
    """Constraint lines for a new lock of `version` for Python `python`: the cluster-wide pins of the
    shipped lock of that version for the newest other Python (never one with pins of its own), so all
    of them agree (make-airflow-lock)."""
    others = [lock for lock in available_locks()
              if lock.airflow_version == version and lock.python != python and not lock.own_pins]  # fmt: skip
    if not others:
        return ""
    reference = max(others, key=lambda lock: lock.python_key)
    return "".join(f"{name}=={pin}\n" for name, pin in sorted(reference.cluster_pins.items()))


def installed_packages(python: Path) -> list[str]:
    probed = probe_interpreter(python)
    return probed[1] if probed else []


@dataclass(frozen=True)
class InstallResult:
    venv: Path
    release: Path
    airflow_version: str
    package_hash: str
    changed: bool
    message: str


def _check_venv_path(venv: Path) -> None:
    if not venv.is_absolute():
        raise UserError(f"--venv: {venv} must be an absolute path")
    check_creatable_dir(venv.parent, "--venv")  # the releases and the link go beside the venv
    check_root_owns_way(venv, "--venv")
    if venv.exists() and not venv.is_symlink() and not venv.is_dir():
        raise UserError(f"--venv: {venv} exists and is not a directory")


def check_root_owns_way(venv: Path, where: str) -> None:
    """Root builds, deletes and runs what lies at and beside `venv`: refuse it (UserError naming `where`)
    when another account owns or may change a directory on the way (AIRFLOW_HOME, which the airflow
    account owns, is such a place)."""
    if os.geteuid() != 0:
        return
    bad = first_untrusted(venv) or first_untrusted(Path(f"{venv}.releases"))
    if bad:
        raise UserError(f"{where}: {bad} is another account's or others may write it; root builds and runs the "
                        f"Airflow venv only where no other account can change it (default {AIRFLOW_VENV})")  # fmt: skip


def check_wheelhouse(wheelhouse: Path | None, where: str = "--wheelhouse") -> None:
    """A directory of wheels root may install: a venv root runs must not take another account's code, so
    every entry, the directory and those above it are root's, and no other account may write them
    (a sticky directory above, such as /tmp, protects root's entries)."""
    if wheelhouse is None:
        return
    entries = list(wheelhouse.iterdir()) if wheelhouse.is_dir() else []
    if not any(entry.suffix == ".whl" for entry in entries):
        raise UserError(f"{where}: {wheelhouse} is not a directory of wheels")
    if os.geteuid() != 0:
        return
    directory = Path(os.path.realpath(wheelhouse))
    untrusted = next((e for e in entries if not root_only(e.lstat())), None) or next(
        (d for d in (directory, *directory.parents) if not root_only(d.stat(), sticky_ok=d != directory)), None
    )
    if untrusted:
        raise UserError(f"{where}: {untrusted} is not root's own or others may write it; root will not install from it")


def _installer(release: Path, lock: Lock, wheelhouse: Path | None) -> list[list[str]]:
    """Return the commands that install a lock into a fresh venv: uv when present, else pip."""
    # from a wheelhouse, wheels only: an sdist there would run its build code as root
    index = ["--no-index", "--find-links", str(wheelhouse), "--only-binary", ":all:"] if wheelhouse else []
    python = str(release / "bin" / "python")
    uv = shutil.which("uv")
    # --no-deps: the lock is the complete set, so there is nothing to resolve
    if uv:
        return [[uv, "pip", "install", "--python", python, "--no-deps", "--compile-bytecode", *index,
                 "-r", str(lock.path)]]  # fmt: skip
    return [
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--progress-bar", "off",
         *index, "-r", str(lock.path)],
        # always precompile: without bytecode every airflow command is seconds slower on hosts
        # that set PYTHONDONTWRITEBYTECODE
        [python, "-m", "compileall", "-q", "-j", "0", str(release / "lib")],
    ]  # fmt: skip


def _run(argv: list[str], what: str, progress: Callable[[str], None], env: dict | None = None) -> None:
    progress(f"{what}: {' '.join(argv[:4])} ...")
    execute.run_streaming(argv, f"{what} failed", lambda line: progress(f"  {line}"), env)


def install_airflow(
    version: str,
    venv: Path,
    python: str = sys.executable,
    wheelhouse: Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] = lambda line: None,
) -> InstallResult:
    """Install Airflow `version` from its shipped lock into `venv` (a symlink to a release dir).

    Idempotent: a venv that already holds exactly the lock's package set is left alone. A venv with
    a different Airflow or package set is replaced only with force. Raise UserError on bad input
    (before anything changes), OperationError when the install itself fails (the previous venv stays).
    """
    _check_venv_path(venv)
    check_wheelhouse(wheelhouse)
    lock = find_lock(version, python_version(python))
    current = installed_packages(venv / "bin" / "python") if (venv / "bin" / "python").exists() else []
    if current:
        current_hash = package_set_hash(current)
        if current_hash == lock.package_hash:
            message = f"{venv}: already Airflow {version}, nothing to do"
            return InstallResult(venv, venv.resolve(), version, current_hash, False, message)
        if not force:
            installed = next((line for line in current if line.startswith("apache-airflow==")), "no apache-airflow")
            raise UserError(
                f"--venv: {venv} holds a different package set ({installed}); re-run with --force to replace it"
            )

    release = build_release(lock, venv, python, wheelhouse, progress)
    switch_venv(venv, release, progress)
    return InstallResult(venv, release, version, lock.package_hash, True, f"{venv} -> {release}")


def build_release(
    lock: Lock, venv: Path, python: str, wheelhouse: Path | None, progress: Callable[[str], None]
) -> Path:
    """Build and verify a lock's venv beside `venv` (VENV.releases/...), not yet in use. Return its path;
    raise OperationError (nothing left behind) when the install fails."""
    check_root_owns_way(venv, "venv")
    release = Path(f"{venv}.releases") / f"airflow-{lock.airflow_version}-py{lock.python}-{lock.package_hash[:8]}"
    if release.exists() and package_set_hash(installed_packages(release / "bin" / "python")) == lock.package_hash:
        return release  # built and verified before (a re-run, or an upgrade tried again)
    if release.exists():  # a failed or abandoned earlier attempt: the symlink does not point here
        shutil.rmtree(release)
    release.parent.mkdir(parents=True, exist_ok=True)
    try:
        # built at its final path: the shebangs of the installed scripts name it
        # uv installs without pip in the venv, which also spares Debian hosts the python3-venv package
        create = [python, "-m", "venv", *(["--without-pip"] if shutil.which("uv") else []), str(release)]
        _run(create, "create venv", progress)
        for argv in _installer(release, lock, wheelhouse):
            _run(argv, "install", progress)
        with tempfile.TemporaryDirectory() as home:
            env = {"AIRFLOW_HOME": home, "PYTHONWARNINGS": "ignore"}
            smoke = [str(release / "bin" / "python"), "-c", _SMOKE_TEST]
            _run(smoke, "check that the celery provider imports", progress, env)
        got = package_set_hash(installed_packages(release / "bin" / "python"))
        if got != lock.package_hash:
            raise OperationError(f"install: the new venv's package set {got} is not the lock's {lock.package_hash}")
    except BaseException:
        shutil.rmtree(release, ignore_errors=True)
        raise
    return release


def switch_venv(venv: Path, release: Path, progress: Callable[[str], None] = lambda line: None) -> None:
    """Point the venv link at a release with one rename: daemons see the old venv or the new one, never none."""
    if venv.exists() and not venv.is_symlink():
        aside = venv.with_name(f"{venv.name}.replaced-by-airflow-node")
        venv.rename(aside)
        progress(f"moved the previous venv aside to {aside}")
    replace_symlink(venv, release)


def build_wheelhouse(
    version: str, directory: Path, python: str = sys.executable, progress: Callable[[str], None] = lambda line: None
) -> Path:
    """Download or build every wheel of a lock into directory, for hosts without internet."""
    lock = find_lock(version, python_version(python))
    directory.mkdir(parents=True, exist_ok=True)
    _run([python, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--progress-bar", "off",
          "-w", str(directory), "-r", str(lock.path)], "build wheelhouse", progress)  # fmt: skip
    return directory


def venv_of(node: NodeSettings, target: Target) -> tuple[Path, str]:
    """The venv link a node's daemons run through, and the system interpreter it was made from (a new
    release is built with that one). Raise UserError when another account may change either: root
    builds beside the one and runs the other (`airflow-node init` moves such a venv)."""
    venv = Path(node.airflow_bin).parent.parent
    if not target.real_system:  # a rendered tree: its own venv, or the interpreter we run on
        local = target.path(str(venv)) / "bin" / "python"
        return venv, str(local.resolve()) if local.exists() else sys.executable
    check_root_owns_way(venv, f"{NODE_FILE}: airflow_bin")
    python = (venv / "bin" / "python").resolve()
    if not trusted_for_root(python):
        raise UserError(f"{python}: the interpreter of {venv} is not root's own; root will not build with it")
    return venv, str(python)
