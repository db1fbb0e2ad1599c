"""Init systems behind one small interface: a node's files, what runs after they change, control.

Two implementations: `systemd.Systemd` (a hardened unit per daemon and a target per role) and
`supervisor.Supervisor` (one conf.d file with a program per daemon and a group per role).
"""

from __future__ import annotations

from typing import Protocol

from airflow_nodes.context import NodeContext
from airflow_nodes.node import NodeSettings
from airflow_nodes.plan import PlannedFile, Retirement, Trigger


class InitSystem(Protocol):
    name: str

    def plan_files(self, ctx: NodeContext) -> list[PlannedFile]:
        """The files that run the role's daemons."""

    def triggers(self, ctx: NodeContext, config_paths: tuple[str, ...]) -> list[Trigger]:
        """Commands to run when those files (or the daemons' config files) change."""

    def retirements(self, node: NodeSettings) -> list[Retirement]:
        """How to take such a file out of service when a new plan no longer has it."""

    def control_argv(self, ctx: NodeContext, action: str, daemons: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        """The commands for start | stop | restart | status of the role, or of the named daemons only."""

    def parse_status(self, output: str) -> list[tuple[str, str]]:
        """Given the status commands' output, return (unit or program, state) pairs."""


def init_system(name: str) -> InitSystem:
    from airflow_nodes.initsystems.supervisor import Supervisor
    from airflow_nodes.initsystems.systemd import Systemd

    return {"systemd": Systemd(), "supervisor": Supervisor()}[name]


def all_init_systems() -> tuple[InitSystem, ...]:
    return tuple(init_system(name) for name in ("systemd", "supervisor"))
