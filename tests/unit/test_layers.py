"""The import contracts of setup.cfg (run by `tox -e lint` through import-linter) name every module."""

from __future__ import annotations

import configparser
from pathlib import Path

# the source tree, not the installed package (tox installs it): the contracts are about the code here
REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "airflow_nodes"
SETUP_CFG = REPO / "setup.cfg"


def modules() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def layers() -> list[list[str]]:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    text = config["importlinter:contract:layers"]["layers"]
    return [[name.strip() for name in line.replace("|", ":").split(":")] for line in text.split("\n") if line.strip()]


def test_every_module_has_a_layer():
    named = [name for layer in layers() for name in layer]
    assert len(named) == len(set(named)), "a module is named twice"

    def placed(module: str) -> bool:
        parts = module.split(".")
        return any(".".join(parts[:end]) in named for end in range(2, len(parts) + 1))

    packages = {m for m in modules() if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    unplaced = sorted(m for m in modules() - packages if not placed(m))
    assert not unplaced, f"add these to a layer of setup.cfg's layers contract: {unplaced}"
    assert not [name for name in named if name not in modules()], "a layer names a module that does not exist"
