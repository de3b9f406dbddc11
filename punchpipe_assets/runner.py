"""Processing through Dagster's own scheduler: ``punchpipe process``, ``backfill`` and ``demo``.

There is one scheduler, Dagster's. ``process`` drives one iteration after another of the daemon's
own loops on the configured instance, until they are idle: the sensor daemon (telemetry landing,
calibration deliveries, waits), the asset daemon (the Declarative Automation sensor) and the
backfill daemon. What they request is what the daemon would request from the same state, with
the same cursors (kept in the instance, so a daemon started later goes on from there). Runs are
ordinary runs of the code location ``punchpipe`` (as workspace.yaml names it), so the UI can
re-execute them; in the embedded default they execute one after the other in this process
(``InProcessRunLauncher``), so punchbowl is imported once. ``backfill`` adds a real asset backfill
to the instance, as the UI's "Materialize all partitions" does, and drives the same loops until it
is done.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import yaml
from rich.console import Console

from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.drive import (
    InProcessRunLauncher,
    drive_until_idle,
    launching_instance,
    workspace_context,
)
from punchpipe_assets.guard import exclusive_writer, fail_orphaned_runs, refuse_beside_daemon, sweep_staging
from punchpipe_assets.offline import configure_offline

console = Console(stderr=True)
INSTANCE_TEMPLATE = Path(__file__).parent / "instance" / "dagster.yaml"
#: Environment variable naming the configuration file the code location loads.
CONFIG_ENV = "PUNCHPIPE_CONFIG"
#: How long ``process`` waits for files in the landing folder to settle before giving up on them.
MAX_SETTLE_WAIT = 120.0


def prepare_environment(config: PipelineConfig) -> None:
    """Point Dagster, Prefect and astropy at the installation's folders (embedded default)."""
    config.make_dirs()
    os.environ.setdefault("DAGSTER_HOME", str(config.dagster_home))
    configure_offline(config.home)
    os.environ.setdefault("PUNCHPIPE_HOME", str(config.home))
    instance_yaml = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    if not instance_yaml.exists():
        Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(INSTANCE_TEMPLATE, instance_yaml)
    # The command line shows progress and a summary; punchbowl's per-step and the storage
    # migrations' INFO lines go to the Dagster run logs, not the terminal.
    for name in ("punchbowl", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def apply_pool_limits(instance: dg.DagsterInstance, config: PipelineConfig) -> dict[str, int]:
    """Set the instance's concurrency pool limits from the configuration.

    This is what the UI's Concurrency page or ``dagster instance concurrency set POOL N`` would do.
    """
    limits = config.pools.model_dump()
    for pool, limit in limits.items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)
    return limits


@contextmanager
def code_location_config(config: PipelineConfig) -> Iterator[Path]:
    """Make the code location load exactly this configuration (``$PUNCHPIPE_CONFIG``) while in the block.

    The code location reads its configuration from the environment each time it is loaded
    (``definitions.defs``); the effective configuration (with the command line's changes) is
    written beside the instance so that runs reconstructed from their origin see it too.
    """
    path = Path(config.dagster_home) / "punchpipe-effective.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    previous = os.environ.get(CONFIG_ENV)
    os.environ[CONFIG_ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(CONFIG_ENV, None)
        else:
            os.environ[CONFIG_ENV] = previous


def _runs_to_statuses(instance: dg.DagsterInstance, run_ids: Sequence[str]) -> dict[str, str]:
    """Return each run's status; ``RETRIED`` for a failed run whose automatic retry (``run_retries``) succeeded."""
    runs = instance.get_runs(dg.RunsFilter(run_ids=list(run_ids)))
    statuses = {run.run_id: run.status.value for run in runs}
    for run in runs:
        retry_id = run.tags.get("dagster/auto_retry_run_id")
        if run.status == dg.DagsterRunStatus.FAILURE and retry_id:
            retry = instance.get_run_by_id(retry_id)
            if retry is not None and retry.status == dg.DagsterRunStatus.SUCCESS:
                statuses[run.run_id] = "RETRIED"
    return statuses


def quiet_daemon_logs(quiet: bool = True) -> None:
    """Send the daemon loops' own INFO/DEBUG lines to the terminal only when nothing else is shown."""
    level = logging.WARNING if quiet else logging.INFO
    for name in ("dagster.daemon", "punchpipe.runner", "dagster"):
        logging.getLogger(name).setLevel(level)


def process_config(config: PipelineConfig) -> PipelineConfig:
    """Return the configuration ``process`` loads.

    It is the installation's, with sensors and automation evaluated each second.
    """
    effective = config.model_copy(deep=True)
    effective.sensor.interval_seconds = 1
    effective.automation.interval_seconds = 1
    return effective


def quiet_config(config: PipelineConfig, quiet: bool) -> PipelineConfig:
    """Return the configuration with the runs' console log at WARNING when the command shows its own progress."""
    if not quiet:
        return config
    effective = config.model_copy(deep=True)
    effective.run_log_level = "WARNING"
    return effective


def run_process(
    config: PipelineConfig,
    instance: dg.DagsterInstance | None = None,
    show_progress: bool = True,
    wait_seconds: float = 0.0,
) -> dict:
    """Do once what the daemon does, through the daemon's own loops, until nothing is left to request.

    One writer at a time: the home's writer lock is held throughout, and ``process`` refuses to
    run beside a live daemon (``guard.PipelineBusy``).

    Parameters
    ----------
    config
        The installation's configuration.
    instance
        The Dagster instance (default: ``DAGSTER_HOME``'s).
    show_progress
        Print each run as it starts and ends.
    wait_seconds
        How long to wait for another writer's lock.

    Returns
    -------
    dict
        ``runs`` and ``failed_runs`` (counts), ``run_ids``, ``rounds``.

    """
    with exclusive_writer(config, "process", wait_seconds):
        base = instance or dg.DagsterInstance.get()
        refuse_beside_daemon(base, "process")
        orphaned = recover_from_crash(config, base)
        return _run_process(config, base, show_progress, orphaned)


def recover_from_crash(config: PipelineConfig, instance: dg.DagsterInstance) -> list[str]:
    """Fail the runs a killed ``process`` left unfinished and sweep its staging folders, saying so.

    Returns the orphaned runs' ids (``process`` retries them).
    """
    orphaned = fail_orphaned_runs(instance)
    for run_id in orphaned:
        console.print(f"run {run_id} was orphaned by a punchpipe process that ended: marked failed", soft_wrap=True)
    for staging in sweep_staging(config.archive_dir):
        console.print(f"removed the staging folder of an interrupted write: {staging}", soft_wrap=True)
    return orphaned


def retry_orphaned_runs(context, orphaned: Sequence[str]) -> list[str]:
    """Re-execute orphaned runs as Dagster's run-retry daemon does (``retry_run``); return the new runs' ids."""
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import retry_run

    instance = context.instance
    retries = []
    for run_id in orphaned:
        retry_run(instance.get_run_by_id(run_id), context)
        retries += [r.run_id for r in instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": run_id}))]
    return retries


def _run_process(
    config: PipelineConfig, base: dg.DagsterInstance, show_progress: bool, orphaned: Sequence[str] = ()
) -> dict:
    from punchpipe_assets.progress import RunDisplay

    apply_pool_limits(base, config)
    quiet_daemon_logs(show_progress)
    registered_before = catalog_counts(config)
    with (
        code_location_config(quiet_config(process_config(config), show_progress)),
        RunDisplay(show_progress) as display,
    ):
        launching = launching_instance(base)
        InProcessRunLauncher.on_run = display.on_run
        try:
            with workspace_context(launching) as context:
                retried = retry_orphaned_runs(context, orphaned)
                summary = drive_until_idle(launching, context)
                summary.runs = retried + summary.runs
        finally:
            InProcessRunLauncher.on_run = None
    statuses = _runs_to_statuses(base, summary.runs) if summary.runs else {}
    failed = [run_id for run_id, status in statuses.items() if status == "FAILURE"]
    registered = catalog_counts(config)
    return {
        "runs": len(summary.runs),
        "failed_runs": len(failed),
        "run_ids": summary.runs,
        "rounds": summary.rounds,
        "files": registered["telemetry"] - registered_before["telemetry"],
        "calibration_files": registered["calibration"] - registered_before["calibration"],
    }


def catalog_counts(config: PipelineConfig) -> dict[str, int]:
    """How many telemetry files and calibration deliveries the catalog has registered."""
    from sqlalchemy import func, select

    from punchpipe_assets.resources.catalog import CalibrationDelivery, CatalogResource, TelemetryFile

    with CatalogResource(url=config.catalog_url).session() as session:
        return {
            "telemetry": session.scalar(select(func.count(TelemetryFile.id))) or 0,
            "calibration": session.scalar(select(func.count(CalibrationDelivery.id))) or 0,
        }


#: Assets an operator's backfill covers by default: every product (external assets are reported, not made).
DEFAULT_BACKFILL_SELECTION = "not group:telemetry and not group:calibration"


def backfill_partitions(asset_graph, selection: str, start: datetime, end: datetime) -> list:
    """Return what a backfill of ``[start, end)`` asks of each selected asset: the partitions overlapping the range.

    Parameters
    ----------
    asset_graph
        The code location's asset graph.
    selection
        A Dagster asset selection string (e.g. ``group:level2``, ``level1_early_wfi1+``).
    start, end
        The time range (naive UTC).

    Returns
    -------
    list[PartitionsByAssetSelector]
        One partition range per selected, time-partitioned asset that has partitions in the range.

    """
    from dagster._core.definitions.partitions.utils.time_window import TimeWindow
    from dagster._core.definitions.selector import PartitionRangeSelector, PartitionsByAssetSelector, PartitionsSelector

    keys = dg.AssetSelection.from_string(selection).resolve(asset_graph)
    selectors = []
    window = TimeWindow(start.replace(tzinfo=UTC), end.replace(tzinfo=UTC))
    for key in sorted(keys, key=lambda k: k.to_user_string()):
        node = asset_graph.get(key)
        partitions_def = node.partitions_def
        if not node.is_materializable or not isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
            continue
        partition_keys = partitions_def.get_partition_keys_in_time_window(window)
        if partition_keys:
            selectors.append(
                PartitionsByAssetSelector(
                    asset_key=key,
                    partitions=PartitionsSelector(
                        ranges=[PartitionRangeSelector(partition_keys[0], partition_keys[-1])]
                    ),
                )
            )
    return selectors


def launch_backfill(
    instance: dg.DagsterInstance, context, selection: str, start: datetime, end: datetime, selectors=None
) -> str:
    """Add an asset backfill of ``[start, end)`` to the instance, as the UI's "Materialize all partitions" does.

    ``selectors`` (``PartitionsByAssetSelector``), when given, name the partitions instead.
    """
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id
    from dagster._time import get_current_timestamp

    graph = context.create_request_context().asset_graph
    selectors = selectors or backfill_partitions(graph, selection, start, end)
    if not selectors:
        raise ValueError(f"no partitions of {selection!r} in {start:%Y-%m-%dT%H:%M} .. {end:%Y-%m-%dT%H:%M}")
    backfill = PartitionBackfill.from_partitions_by_assets(
        backfill_id=make_new_backfill_id(),
        asset_graph=graph,
        backfill_timestamp=get_current_timestamp(),
        tags={"dagster/priority": "0", "punchpipe/command": "backfill"},
        dynamic_partitions_store=instance,
        partitions_by_assets=selectors,
        title=f"punchpipe backfill {start:%Y-%m-%dT%H:%M} .. {end:%Y-%m-%dT%H:%M}",
        description=f"selection: {selection}",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def run_backfill(
    config: PipelineConfig,
    start: datetime,
    end: datetime,
    selection: str = DEFAULT_BACKFILL_SELECTION,
    instance: dg.DagsterInstance | None = None,
    show_progress: bool = True,
    wait: bool = True,
    wait_seconds: float = 0.0,
    selectors=None,
) -> dict:
    """Launch a real Dagster backfill of ``[start, end)`` and drive the daemon's loops until it is done.

    ``selectors`` (``PartitionsByAssetSelector``), when given, name the partitions instead.

    With ``wait`` false, the backfill is only launched (a running daemon executes it); otherwise the
    home's writer lock is held and a live daemon refused, as for ``process``.

    Returns
    -------
    dict
        ``backfill_id``, ``status``, ``runs``, ``failed_runs``.

    """
    with exclusive_writer(config, "backfill", wait_seconds):
        base = instance or dg.DagsterInstance.get()
        if wait:
            refuse_beside_daemon(base, "backfill")
            for run_id in recover_from_crash(config, base):
                console.print(f"run {run_id} was not retried by backfill: the next process retries it", soft_wrap=True)
        return _run_backfill(config, start, end, selection, base, show_progress, wait, selectors)


def _run_backfill(
    config: PipelineConfig,
    start: datetime,
    end: datetime,
    selection: str,
    base: dg.DagsterInstance,
    show_progress: bool,
    wait: bool,
    selectors=None,
) -> dict:
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

    from punchpipe_assets.progress import RunDisplay

    apply_pool_limits(base, config)
    quiet_daemon_logs(show_progress)
    with (
        code_location_config(quiet_config(process_config(config), show_progress)),
        RunDisplay(show_progress) as display,
    ):
        launching = launching_instance(base)
        InProcessRunLauncher.on_run = display.on_run
        try:
            with workspace_context(launching) as context:
                backfill_id = launch_backfill(launching, context, selection, start, end, selectors)
                if show_progress:
                    console.print(f"backfill {backfill_id} launched ({selection})")
                if not wait:
                    return {"backfill_id": backfill_id, "status": "REQUESTED", "runs": 0, "failed_runs": 0}

                def done() -> bool:
                    return launching.get_backfill(backfill_id).status in BULK_ACTION_TERMINAL_STATUSES

                drive_until_idle(launching, context, until=done)
        finally:
            InProcessRunLauncher.on_run = None
    runs = base.get_runs(dg.RunsFilter.for_backfill(backfill_id))
    return {
        "backfill_id": backfill_id,
        "status": base.get_backfill(backfill_id).status.value,
        "runs": len(runs),
        "failed_runs": sum(run.status == dg.DagsterRunStatus.FAILURE for run in runs),
    }
