"""Init systems behind one small interface: files for a node, commands after a change, control.

Each module exposes:
  plan_files(ctx) -> list[PlannedFile]
  triggers(ctx, files) -> list[Trigger]       commands to run when those files change
  control_argv(ctx, action) -> list[tuple]    start | stop | restart | status
"""

from __future__ import annotations

from types import ModuleType

from airflow_nodes.initsystems import supervisor, systemd

_BY_NAME = {"systemd": systemd, "supervisor": supervisor}


def get_init_system(name: str) -> ModuleType:
    return _BY_NAME[name]
