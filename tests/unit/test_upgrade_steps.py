"""The upgrade as a list of steps, each with its undo: a failure undoes exactly the steps done, newest first,
and the dry run prints the very steps the run carries out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import airflow_nodes.upgrade as upgrade_module
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.steps import Step, StepFailed, run_steps
from airflow_nodes.target import Target
from airflow_nodes.upgrade import UpgradeRun, carry_out, plan_upgrade, upgrade, upgrade_steps

# -- run_steps itself --------------------------------------------------------------------------------


class Recorder:
    """Steps that write what ran into one list, as ("do" | "undo", name)."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []
        self.lines: list[str] = []

    def action(self, kind: str, name: str):
        return lambda state: self.ran.append((kind, name))

    def step(self, name: str, undo: bool = True, undo_if_failed: bool = False) -> Step:
        return Step(name, f"{name}, described", self.action("do", name), self.action("undo", name) if undo else None,
                    undo_if_failed)  # fmt: skip

    def undone(self) -> list[str]:
        return [name for kind, name in self.ran if kind == "undo"]


def failing(exc: BaseException):
    def do(state: object) -> None:
        raise exc

    return do


NAMES = ["one", "two", "three", "four", "five"]


@pytest.mark.parametrize("k", range(len(NAMES)))
@pytest.mark.parametrize("exc", [OperationError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_failure_at_step_k_undoes_exactly_the_steps_before_it_newest_first(k, exc):
    record = Recorder()
    steps = [record.step(name) for name in NAMES]
    steps[k] = dataclasses.replace(steps[k], do=failing(exc))
    if k == 0:  # nothing done, nothing to undo: the failure as it came
        with pytest.raises(type(exc)):
            run_steps(steps, None, record.lines.append)
        assert record.ran == []
        return
    with pytest.raises(StepFailed) as raised:
        run_steps(steps, None, record.lines.append)
    assert [name for kind, name in record.ran if kind == "do"] == NAMES[:k]
    assert record.undone() == NAMES[:k][::-1]
    assert raised.value.cause is exc and raised.value.step is steps[k] and raised.value.not_undone == []
    assert [s.name for s in raised.value.undone] == NAMES[:k][::-1]
    assert f"undone: {', '.join(NAMES[:k][::-1])}" in str(raised.value), raised.value


def test_an_undo_that_fails_is_reported_and_the_others_still_run():
    record = Recorder()
    steps = [record.step(name) for name in NAMES]
    steps[1] = dataclasses.replace(steps[1], undo=failing(OperationError("pg_restore: no such file")))
    steps[3] = dataclasses.replace(steps[3], do=failing(OperationError("boom")))
    with pytest.raises(StepFailed) as raised:
        run_steps(steps, None, record.lines.append)
    assert record.undone() == ["three", "one"]  # two's undo failed in between
    assert [(s.name, str(e)) for s, e in raised.value.not_undone] == [("two", "pg_restore: no such file")]
    assert "not undone: two (pg_restore: no such file)" in str(raised.value)
    assert "  could not undo two: pg_restore: no such file" in record.lines


def test_steps_without_an_undo_are_passed_over_and_a_failed_step_is_undone_only_when_it_says_so():
    record = Recorder()
    steps = [record.step("check", undo=False), record.step("drain"), record.step("build", undo=False),
             record.step("migrate", undo_if_failed=True)]  # fmt: skip
    with pytest.raises(StepFailed):
        run_steps([*steps[:3], dataclasses.replace(steps[3], do=failing(OperationError("half done")))], None, print)
    assert record.undone() == ["migrate", "drain"]  # a half-migrated DB is restored too
    record.ran.clear()
    with pytest.raises(OperationError, match="^no lock$") as raised:  # nothing to undo: the error as it came
        run_steps([dataclasses.replace(steps[0], do=failing(OperationError("no lock"))), *steps[1:]], None, print)
    assert not isinstance(raised.value, StepFailed) and record.ran == []


def test_a_second_ctrl_c_stops_the_undoing_and_says_what_is_left():
    record = Recorder()
    steps = [record.step(name) for name in NAMES]
    steps[2] = dataclasses.replace(steps[2], undo=failing(KeyboardInterrupt()))
    steps[4] = dataclasses.replace(steps[4], do=failing(OperationError("boom")))
    with pytest.raises(KeyboardInterrupt):
        run_steps(steps, None, record.lines.append)
    assert record.undone() == ["four"]
    assert "  interrupted while undoing three; left as it is: three, two, one" in record.lines


def test_a_run_that_succeeds_returns_each_steps_time_and_says_each_is_done():
    record = Recorder()
    timings = run_steps([record.step(name) for name in NAMES], None, record.lines.append)
    assert [name for name, _ in timings] == NAMES and record.undone() == []
    assert [line.split(" ")[:4] for line in record.lines] == [["", "", "done:", name] for name in NAMES]


# -- the upgrade's own step list ---------------------------------------------------------------------

# the steps in order; whether each has an undo; whether that undo runs when the step itself fails (it may
# stop halfway: a half-migrated DB, a half-rendered node, some daemons started or stopped)
UPGRADE_STEPS = [
    ("preflight", False, False),
    ("build Airflow 3.3.2 and lint its config", False, False),
    ("drain", True, True),
    ("backup", False, False),
    ("stop the master", True, True),
    ("switch the venv", True, True),
    ("re-render", True, True),
    ("migrate", True, True),
    ("start and health", True, True),
]
DUMP = Path("/var/backups/airflow-node/airflow-db-2.11.2-20260101T000000Z.dump")


@pytest.fixture
def root(run_cli, tmp_path, make_venv) -> Path:
    """A master rendered under --root, on Airflow 2.11.2 (the venv in its tree, where --root looks)."""
    root = tmp_path / "master"
    venv = make_venv(root=root, **{"apache-airflow": "2.11.2"})
    result = run_cli("init", "--role", "master", "--root", root, "--venv", venv, "--master-host", "10.20.0.1",
                     "--broker-url", "redis://10.20.0.1:6379/0", "--db-url", "postgresql://a@10.20.0.1/airflow",
                     "--init-system", "systemd", "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert result.code == 0, result.err
    return root


@pytest.fixture
def plan(root, tmp_path):
    return plan_upgrade(Target.at(root), "3.3.2", tmp_path / "backups")


def recorded_steps(plan, k: int, exc: BaseException, ran: list[tuple[str, str]]) -> list[Step]:
    """The upgrade's real steps, step k's do raising exc, every other do and every undo recording itself."""

    def recorder(kind: str, name: str):
        return lambda run: ran.append((kind, name))

    return [
        dataclasses.replace(
            step,
            do=failing(exc) if index == k else recorder("do", step.name),
            undo=step.undo and recorder("undo", step.name),
        )
        for index, step in enumerate(upgrade_steps(plan))
    ]


def test_the_upgrade_runs_these_steps_in_this_order(plan):
    steps = upgrade_steps(plan)
    assert [(step.name, step.undo is not None, step.undo_if_failed) for step in steps] == UPGRADE_STEPS


@pytest.mark.parametrize("k", range(len(UPGRADE_STEPS)), ids=[name for name, *_ in UPGRADE_STEPS])
@pytest.mark.parametrize("exc", [OperationError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_failed_upgrade_step_undoes_exactly_the_steps_done_newest_first(root, plan, k, exc):
    steps, ran = upgrade_steps(plan), []
    run = UpgradeRun(Target.at(root), print, 10, dump=DUMP)
    # the undos that must run: the steps completed, newest first, and the failed one when it may stop halfway
    done = [*steps[:k], *([steps[k]] if steps[k].undo_if_failed else [])]
    expected = [step.name for step in reversed(done) if step.undo is not None]
    with pytest.raises((OperationError, KeyboardInterrupt)) as raised:
        carry_out(plan, recorded_steps(plan, k, exc, ran), run)
    assert [name for kind, name in ran if kind == "do"] == [step.name for step in steps[:k]]
    assert [name for kind, name in ran if kind == "undo"] == expected
    message = str(raised.value)
    reason = "boom" if isinstance(exc, OperationError) else "interrupted: KeyboardInterrupt"
    names = [name for name, *_ in UPGRADE_STEPS]
    if not expected:  # preflight, build: nothing changed, the failure as it came
        assert raised.value is exc
    elif k < names.index("stop the master"):
        assert message == f"upgrade: {reason}; nothing was changed, the scheduler and the workers run again"
    else:
        db = f"the DB restored from {DUMP}" if k >= names.index("migrate") else f"the DB unchanged (backup {DUMP})"
        assert message == f"upgrade to 3.3.2 failed ({reason}); rolled back to Airflow 2.11.2, {db}"


def test_a_rollback_that_fails_names_the_backup_and_the_old_airflow_and_undoes_the_rest(root, plan):
    steps, ran = upgrade_steps(plan), []
    names = [step.name for step in steps]
    steps = recorded_steps(plan, names.index("start and health"), OperationError("not healthy within 300 s"), ran)
    migrate = names.index("migrate")
    steps[migrate] = dataclasses.replace(steps[migrate], undo=failing(OperationError("pg_restore: connection refused")))
    run = UpgradeRun(Target.at(root), print, 10, dump=DUMP, old_release=Path("/opt/airflow/venv.releases/old"))
    with pytest.raises(OperationError) as raised:
        carry_out(plan, steps, run)
    assert str(raised.value) == (
        "upgrade to 3.3.2 failed (not healthy within 300 s), and so did the rollback (undoing migrate: pg_restore: "
        f"connection refused): the DB backup is {DUMP}, the old Airflow /opt/airflow/venv.releases/old; "
        "the workers take no tasks until restarted"
    )
    assert [name for kind, name in ran if kind == "undo"] == [
        "start and health", "re-render", "switch the venv", "stop the master", "drain"
    ]  # fmt: skip


def test_a_drain_that_cannot_be_undone_says_what_to_do(root, plan):
    ran: list[tuple[str, str]] = []
    steps = recorded_steps(plan, 3, OperationError("--backup-dir: cannot create it: No space left on device"), ran)
    problem = "the scheduler did not start (systemctl start failed): airflow-node start"
    steps[2] = dataclasses.replace(steps[2], undo=failing(OperationError(problem)))
    with pytest.raises(OperationError) as raised:
        carry_out(plan, steps, UpgradeRun(Target.at(root), print, 10))
    assert str(raised.value) == (
        f"upgrade: --backup-dir: cannot create it: No space left on device; nothing was changed, but {problem}"
    )


def test_after_a_failed_restore_no_old_airflow_is_started_on_the_db(root, plan):
    run = UpgradeRun(Target.at(root), print, 10, dump=DUMP, db_migrated=True)
    for name in ("stop the master", "drain"):
        undo = next(step for step in upgrade_steps(plan) if step.name == name).undo
        with pytest.raises(OperationError, match="the DB is not Airflow 2.11.2's"):
            undo(run)


def test_a_blocking_preflight_is_a_user_error_and_changes_nothing(root, plan):
    ran: list[tuple[str, str]] = []
    steps = recorded_steps(plan, 0, UserError("upgrade: 1 DAG finding(s) that Airflow 3.3.2 cannot run"), ran)
    with pytest.raises(UserError, match="DAG finding"):
        carry_out(plan, steps, UpgradeRun(Target.at(root), print, 10))
    assert ran == []


# -- the dry run is the run --------------------------------------------------------------------------


def test_the_dry_run_prints_the_descriptions_of_the_steps_the_run_executes(run_cli, root, plan, monkeypatch):
    described = [step.description for step in upgrade_steps(plan)]
    result = run_cli("upgrade", "--root", root, "--to", "3.3.2", "--dry-run", "--backup-dir", plan.backup_dir)
    assert result.code == 0, result.err
    assert result.out.splitlines()[1:] == [f"  {number}. {line}" for number, line in enumerate(described, 1)]
    given: list[list[str]] = []

    def capture(steps, run, progress):
        given.append([step.description for step in steps])
        raise OperationError("stopped here")

    monkeypatch.setattr(upgrade_module, "run_steps", capture)
    with pytest.raises(OperationError, match="stopped here"):
        upgrade(plan, Target.at(root), print, 10)
    assert given == [described]
