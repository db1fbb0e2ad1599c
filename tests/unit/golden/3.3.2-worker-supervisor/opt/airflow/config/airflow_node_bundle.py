"""Managed by airflow-node: the DAG folder as a versioned DAG bundle over airflow-node's releases.

airflow.cfg names it in [dag_processor] dag_bundle_config_list (as "dags-folder", the name of Airflow's
own default bundle, so existing DAGs keep theirs). A release is a complete, read-only tree that
`airflow-node sync` published; its directory name is the DAG version Airflow records on each DAG run.
The dag-processor reads the published release, pinned from one refresh to the next (a flip mid-parse
mixes no two releases); a task reads the release its run was created with. A worker that lacks it asks
its follower (`airflow-node follow`, root) by creating an empty file named after it in the requests
directory, and waits until the release appears (the follower fetches exactly that tree from the
master) or the follower says why it cannot.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from airflow.dag_processing.bundles.base import BaseDagBundle

RELEASE_NAME = re.compile(r"[0-9a-f]{16}")


class ReleaseDagBundle(BaseDagBundle):
    supports_versioning = True

    def __init__(self, *, current: str, releases: str, requests: str, failures: str, wait: int = 120, **kwargs):
        super().__init__(**kwargs)
        self._current, self._releases = Path(current), Path(releases)
        self._requests, self._failures, self._wait = Path(requests), Path(failures), wait
        self._pinned: Path | None = None

    def _published(self) -> Path:
        real = Path(os.path.realpath(self._current))
        if real.parent == self._releases and RELEASE_NAME.fullmatch(real.name):
            return real
        return self._current  # nothing published yet: the empty folder init made

    @property
    def path(self) -> Path:
        if self.version is not None:
            return self._releases / self.version
        if self._pinned is None:
            self._pinned = self._published()
        return self._pinned

    def get_current_version(self) -> str | None:
        if self.version is not None:
            return self.version
        return self.path.name if self.path.parent == self._releases else None

    def refresh(self) -> None:
        if self.version is None:
            self._pinned = self._published()

    def initialize(self) -> None:
        if self.version is not None:
            if not RELEASE_NAME.fullmatch(self.version):
                raise ValueError(f"DAG version {self.version[:40]!r} is not an airflow-node release name")
            if not (self._releases / self.version).is_dir():
                self._ask_for_release()
        else:
            self.refresh()
        super().initialize()

    def _ask_for_release(self) -> None:
        asked = time.time()
        try:
            os.close(os.open(self._requests / self.version, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        except FileNotFoundError:
            raise RuntimeError(
                f"DAG release {self.version} is not on this node, and no airflow-node follower runs here to fetch it"
            ) from None
        except OSError:  # a link there: the follower reads the names only, so the request stands
            pass
        deadline = asked + self._wait
        while time.time() < deadline:
            if (self._releases / self.version).is_dir():
                return
            failed = self._failures / self.version
            try:
                if failed.stat().st_mtime >= asked - 1:
                    raise RuntimeError(failed.read_text(errors="replace")[:500].strip())
            except FileNotFoundError:
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"DAG release {self.version} was not fetched within {self._wait} s; see the worker's "
            "airflow-dag-follower log"
        )
