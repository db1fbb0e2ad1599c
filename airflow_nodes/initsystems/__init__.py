"""Init systems behind one small interface: a node's files, what runs after they change, control.

Two implementations: `systemd.Systemd` (a hardened unit per daemon and a target per role) and
`supervisor.Supervisor` (one conf.d file with a program per daemon, each its own group). Nothing
outside this package knows which one a node runs under.
"""

from __future__ import annotations

from typing import Protocol

from airflow_nodes.context import NodeContext
from airflow_nodes.initsystems.supervisor import Supervisor
from airflow_nodes.initsystems.systemd import Systemd
from airflow_nodes.node import NodeSettings
from airflow_nodes.plan import PlannedDir, PlannedFile, Retirement, Trigger
from airflow_nodes.target import Target


class InitSystem(Protocol):
    name: str

    def plan_dirs(self, ctx: NodeContext) -> list[PlannedDir]:
        """The directories its files live in, if ours to make."""

    def plan_files(self, ctx: NodeContext, config_digest: str) -> list[PlannedFile]:
        """The files that run the role's daemons; `config_digest` changes with the config they read."""

    def boot_command(self, ctx: NodeContext) -> tuple[str, ...] | None:
        """What the cron entry runs at boot, when nothing else starts the role."""

    def installed(self, node: NodeSettings | None, target: Target) -> tuple[str, ...]:
        """What of ours it runs now for those settings, read from its files on disk (supervisor: the groups
        of our conf.d file): the one input of the plan read from the node, read before planning."""

    def triggers(self, ctx: NodeContext, installed: tuple[str, ...]) -> list[Trigger]:
        """Commands to run when those files (or the daemons' config files) change: each daemon whose
        definition or config changed is restarted, and no other."""

    def retirements(self, node: NodeSettings | None, installed: tuple[str, ...]) -> list[Retirement]:
        """How to take such a file out of service when a new plan no longer has it."""

    def control_argv(
        self, ctx: NodeContext, action: str, daemons: tuple[str, ...] = (), installed: tuple[str, ...] = ()
    ) -> list[tuple[str, ...]]:
        """The commands for start | stop | restart | status of the role, or of the named daemons only."""

    def ensure_running(self, node: NodeSettings) -> None:
        """Before start or restart: the init system itself answers (raise OperationError)."""

    def observable_under_root(self, node: NodeSettings) -> bool:
        """Whether the status of a node rendered under --root can be asked."""

    def settle(self, node: NodeSettings, target: Target, conf_given: bool) -> NodeSettings:
        """Init's settings for this init system, completed and checked (raise UserError)."""

    def parse_status(self, output: str) -> list[tuple[str, str]]:
        """Given the status commands' output, return (unit or program, state) pairs."""


_BY_NAME: dict[str, InitSystem] = {"systemd": Systemd(), "supervisor": Supervisor()}


def init_system(name: str) -> InitSystem:
    return _BY_NAME[name]


def all_init_systems() -> tuple[InitSystem, ...]:
    return tuple(_BY_NAME.values())
