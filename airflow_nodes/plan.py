"""A Plan: what a node needs on disk and which commands follow a change. Pure values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PlannedFile:
    path: str  # absolute path on the target system (re-rooted under --root when applied)
    content: bytes
    mode: int
    owner: str = "root"
    group: str = "root"
    secret: bool = False  # holds secrets: never shown in a diff, created with its final mode


@dataclass(frozen=True)
class PlannedDir:
    path: str
    mode: int
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class SystemUser:
    name: str
    home: str
    shell: str = "/usr/sbin/nologin"


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Trigger:
    """Run commands when any of `paths` was created or changed by this apply, unless one of `unless` was."""

    paths: tuple[str, ...]
    commands: tuple[Command, ...]
    unless: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    users: tuple[SystemUser, ...] = ()
    dirs: tuple[PlannedDir, ...] = ()
    files: tuple[PlannedFile, ...] = ()
    triggers: tuple[Trigger, ...] = field(default=())
    secrets: tuple[str, ...] = ()  # values to redact from anything we print

    def commands_after(self, changed: set[str]) -> list[Command]:
        """Given the paths that changed, return the commands to run, each once, in trigger order."""
        commands: list[Command] = []
        for trigger in self.triggers:
            if changed.intersection(trigger.paths) and not changed.intersection(trigger.unless):
                commands += [c for c in trigger.commands if c.argv not in {d.argv for d in commands}]
        return commands
