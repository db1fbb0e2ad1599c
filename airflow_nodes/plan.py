"""A Plan: what a node needs on disk and which commands follow a change. Pure values, no I/O."""

from __future__ import annotations

import dataclasses
import fnmatch
import posixpath
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PlannedFile:
    path: str  # absolute path on the target system (re-rooted under --root when applied)
    content: bytes
    mode: int
    owner: str = "root"
    group: str = "root"
    secret: bool = False  # holds secrets: never shown in a diff, created with its final mode
    # the account it belongs to writes it too (Airflow opens it for writing): what it holds there is no
    # one's edit to keep, and is replaced without a --force
    shared: bool = False


@dataclass(frozen=True)
class PlannedDir:
    path: str
    mode: int
    owner: str = "root"
    group: str = "root"
    created_only: bool = False  # made when missing; an existing one is the operator's, its mode and owner kept


@dataclass(frozen=True)
class SystemUser:
    name: str
    home: str
    shell: str = "/usr/sbin/nologin"
    purpose: str = "for the Airflow daemons"


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    reason: str
    only_if: tuple[str, ...] = ()  # run only when this succeeds (as systemctl try-restart: "if running")
    input: str | None = None  # its standard input (SQL with a password's verifier): never shown
    user: str | None = None  # the account it runs as, with none of our environment (psql as postgres)

    @property
    def text(self) -> str:
        """The command as we show it (never its input)."""
        return " ".join(self.argv) + (f"   (as {self.user})" if self.user else "")


@dataclass(frozen=True)
class Trigger:
    """Run commands when any of `paths` was created or changed by this apply, unless one of `unless` was."""

    paths: tuple[str, ...]
    commands: tuple[Command, ...]
    unless: tuple[str, ...] = ()


@dataclass(frozen=True)
class Retirement:
    """How to take a file we wrote out of service once a plan no longer has it.

    Applies to removed paths matching `pattern` (fnmatch). `before` runs while the file still exists
    (`systemctl disable --now NAME` needs the unit file), `after` once it is gone; a word "{name}" in
    their commands stands for the file's name.
    """

    pattern: str
    before: tuple[Command, ...] = ()
    after: tuple[Command, ...] = ()


@dataclass(frozen=True)
class Plan:
    users: tuple[SystemUser, ...] = ()
    dirs: tuple[PlannedDir, ...] = ()
    files: tuple[PlannedFile, ...] = ()
    triggers: tuple[Trigger, ...] = field(default=())
    retirements: tuple[Retirement, ...] = ()
    keep: tuple[str, ...] = ()  # files we wrote that stay although not planned (uninstall: the cluster file)
    purge_secrets: bool = False  # `uninstall --purge`: files holding the only copy of a secret go too
    secrets: tuple[str, ...] = ()  # values to redact from anything we print
    # run after everything else, whatever changed: what the node was found to lack (a database role), or
    # what uninstall --purge drops
    final_commands: tuple[Command, ...] = ()

    @property
    def paths(self) -> set[str]:
        return {f.path for f in self.files}

    def commands_after(self, changed: set[str]) -> list[Command]:
        """Given the paths that changed, return the commands to run, each once, in trigger order."""
        commands: list[Command] = []
        for trigger in self.triggers:
            if changed.intersection(trigger.paths) and not changed.intersection(trigger.unless):
                commands += [c for c in trigger.commands if c.argv not in {d.argv for d in commands}]
        return commands

    def retire_commands(self, removed: list[str]) -> tuple[list[Command], list[Command]]:
        """Given the paths this apply removes, return (commands before the removal, commands after), each once."""
        before: list[Command] = []
        after: list[Command] = []
        for path in removed:
            for rule in self.retirements:
                if fnmatch.fnmatchcase(path, rule.pattern):
                    name = posixpath.basename(path)
                    for commands, found in ((rule.before, before), (rule.after, after)):
                        for command in commands:
                            argv = tuple(name if word == "{name}" else word for word in command.argv)
                            if argv not in {c.argv for c in found}:
                                found.append(dataclasses.replace(command, argv=argv))
        return before, after
