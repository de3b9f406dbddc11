"""Driving Dagster's own daemon loops in this process: the sensor, asset (automation) and backfill daemons.

``punchpipe process`` and ``punchpipe backfill`` do not decide what to run: they run one
iteration after another of the daemon's loops (``dagster._daemon``) on the configured instance
until those are idle, with the code location ``punchpipe`` loaded in this process, and the runs
they request executed here one after the other (``InProcessRunLauncher``) in the embedded default.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.launcher.sync_in_memory_run_launcher import SyncInMemoryRunLauncher

LOCATION_NAME = "punchpipe"
DEFINITIONS_MODULE = "punchpipe_assets.definitions"
logger = logging.getLogger("punchpipe.runner")


class InProcessRunLauncher(SyncInMemoryRunLauncher):
    """Dagster's synchronous in-memory run launcher, with a hook that reports each run to the display.

    Runs execute one after the other in the launching process: punchbowl (7-9 s, ~450 MB) and the
    code location are loaded once for all of them.
    """

    #: Called with each run before and after it executes (``started``/``finished``).
    on_run: Callable[[dg.DagsterRun, str], None] | None = None

    def launch_run(self, context) -> None:  # noqa: D102 - the run launcher interface
        from punchpipe_assets.guard import EXECUTED_BY_TAG, this_process

        self._instance.add_run_tags(context.dagster_run.run_id, {EXECUTED_BY_TAG: this_process()})
        hook = InProcessRunLauncher.on_run
        if hook is not None:
            hook(context.dagster_run, "started")
        # The location's own cache (``definitions._definitions_of``) keeps reloading cheap.
        forget_loaded_definitions()
        super().launch_run(context)
        if hook is not None:
            run = self._instance.get_run_by_id(context.dagster_run.run_id)
            hook(run or context.dagster_run, "finished")


def launching_instance(instance: dg.DagsterInstance, in_process: bool = True) -> dg.DagsterInstance:
    """Return the same instance (same storage), launching runs synchronously in this process when ``in_process``.

    Otherwise the instance as configured: runs go through its run coordinator and launcher (a
    queue worked by the daemon, Celery workers...).
    """
    if not in_process:
        return instance
    from dagster._serdes import ConfigurableClassData

    ref = instance.get_ref()._replace(
        run_coordinator_data=ConfigurableClassData(
            "dagster._core.run_coordinator.sync_in_memory_run_coordinator", "SyncInMemoryRunCoordinator", "{}\n"
        ),
        run_launcher_data=ConfigurableClassData("punchpipe_assets.drive", "InProcessRunLauncher", "{}\n"),
    )
    return dg.DagsterInstance.from_ref(ref)


def forget_loaded_definitions() -> None:
    """Drop the definitions Dagster keeps of the last job it executed in this process.

    ``ReconstructableJob`` caches its repository and job definitions per process (keyed by the code
    pointer alone, not by the configuration the code location loads), so a run under a second
    configuration in the same process (tests, a notebook) would otherwise execute the first
    configuration's resources (its catalog, its archive). Called before every in-process launch.
    """
    ReconstructableJob.get_repository_definition.cache_clear()
    ReconstructableJob.get_definition.cache_clear()


@contextmanager
def workspace_context(instance: dg.DagsterInstance):
    """Load the code location ``punchpipe`` in this process, as the daemon sees it."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable, module_name=DEFINITIONS_MODULE, working_directory=os.getcwd()
        ),
        location_name=LOCATION_NAME,
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget([origin])) as context:
        yield context


@dataclass
class DriveSummary:
    """What the daemon loops did while ``process`` or ``backfill`` drove them."""

    runs: list[str] = field(default_factory=list)
    failed_runs: list[str] = field(default_factory=list)
    backfills: list[str] = field(default_factory=list)
    rounds: int = 0


def _drain(iterator) -> None:
    for _ in iterator or ():
        pass


def daemon_round(context, asset_daemon) -> None:
    """One iteration of the asset (Declarative Automation), sensor and backfill daemons.

    Automation first: its first tick on a new instance records the state before any run, as the
    daemon's first tick would (conditions such as "any input updated" compare with the last tick).
    """
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster._daemon.sensor import execute_sensor_iteration

    asset_daemon._run_iteration_impl(  # noqa: SLF001 - the daemon's own iteration, driven here
        context, threadpool_executor=None, amp_tick_futures={}, debug_crash_flags={}
    )
    _drain(execute_sensor_iteration(context, logger, None, None))
    _drain(execute_backfill_iteration(context, logger))


def retry_failed_runs(context, run_ids: list[str]) -> None:
    """Re-execute the failed runs the instance's ``run_retries`` retries, as the daemon's run-retry loop does.

    Only runs that failed from infrastructure with ``retry_on_asset_or_op_failure: false``; a run
    already retried is not retried again (``consume_new_runs_for_automatic_reexecution``).
    """
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import consume_new_runs_for_automatic_reexecution

    instance = context.instance
    if not run_ids or not instance.run_retries_enabled:
        return
    records = instance.get_run_records(dg.RunsFilter(run_ids=list(run_ids)))
    _drain(consume_new_runs_for_automatic_reexecution(context, records, logger))


def _active_backfills(instance: dg.DagsterInstance) -> list:
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

    return instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED]))


def _sensor_work_left(instance: dg.DagsterInstance, context) -> bool:
    """Whether a sensor's last tick did something (registered files, requested runs, reported events)."""
    from dagster._core.scheduler.instigation import TickStatus

    request = context.create_request_context()
    for entry in request.get_code_location_entries().values():
        if entry.code_location is None:
            continue
        for repository in entry.code_location.get_repositories().values():
            for sensor in repository.get_sensors():
                ticks = instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id, limit=1)
                if ticks and ticks[0].status not in (TickStatus.SKIPPED, TickStatus.FAILURE):
                    return True
    return False


def drive_until_idle(
    instance: dg.DagsterInstance,
    context,
    until: Callable[[], bool] | None = None,
    max_rounds: int = 10_000,
    pause: float = 1.0,
) -> DriveSummary:
    """Drive the daemon loops until a round requests nothing new and no backfill is in progress.

    Parameters
    ----------
    instance
        The instance the runs are created on.
    context
        The workspace context of the code location.
    until
        Stop as soon as this is true (e.g. a backfill finished), even if other work is left.
    max_rounds
        A bound on the rounds.
    pause
        Seconds between rounds that did nothing but wait (sensor intervals, settling files).

    """
    from dagster._daemon.asset_daemon import AssetDaemon

    asset_daemon = AssetDaemon(settings=instance.get_settings("auto_materialize"), pre_sensor_interval_seconds=1)
    summary = DriveSummary()
    seen = {run.run_id for run in instance.get_runs()}
    quiet_rounds = 0
    while summary.rounds < max_rounds:
        summary.rounds += 1
        daemon_round(context, asset_daemon)
        new = [run for run in instance.get_runs() if run.run_id not in seen]
        seen.update(run.run_id for run in new)
        summary.runs += [run.run_id for run in new]
        summary.failed_runs += [run.run_id for run in new if run.status == dg.DagsterRunStatus.FAILURE]
        retry_failed_runs(context, summary.failed_runs)
        if until is not None and until():
            break
        busy = bool(new) or bool(_active_backfills(instance)) or _sensor_work_left(instance, context)
        quiet_rounds = 0 if busy else quiet_rounds + 1
        # Two quiet rounds in a row: the automation has evaluated what the last runs changed.
        if quiet_rounds >= 2:
            break
        time.sleep(0 if busy else pause)
    return summary
