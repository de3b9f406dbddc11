"""Level 1 early assets (``X?`` products): one per camera, hourly partitions like Level 0."""

import hashlib
from collections.abc import Callable
from datetime import timedelta

import dagster as dg
from sqlalchemy.orm import Session

from punchpipe_assets.assets.calibration import calibration_key
from punchpipe_assets.assets.level0 import PUNCHBOWL_POOL, level0_key, naive_utc, product_asset_kwargs
from punchpipe_assets.calibration import CALIBRATION_KINDS
from punchpipe_assets.cameras import Camera
from punchpipe_assets.config import AutomationSettings
from punchpipe_assets.level1 import LEVEL1_EARLY_CODE_VERSION, FrameOutcome, FrameProcessor, Level1EarlyProcessor
from punchpipe_assets.partitions import hourly_partitions
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource

# Late data (replays) are carried to Level 1 this far back, not only in the newest hour
# (the configuration's default; ``build_definitions`` passes the configured value).
AUTOMATION_LOOKBACK = timedelta(days=AutomationSettings().lookback_days)


def level1_automation(
    lookback: timedelta = AUTOMATION_LOOKBACK, give_up_waiting_after: timedelta | None = None
) -> dg.AutomationCondition:
    """Eager Declarative Automation for products made from hourly inputs, back to ``lookback``.

    Any updated input partition within the window (late telemetry too) requests the partition
    once none of its inputs is missing or in progress. With ``give_up_waiting_after``, a partition
    older than that is made even with inputs missing (an hour without telemetry never gets its
    input partition). Calibration deliveries are ignored: reprocessing with new calibration is an
    operator's backfill of the stale partitions, not an automatic campaign over the mission.
    """
    condition = dg.AutomationCondition.eager().replace(
        "in_latest_time_window", dg.AutomationCondition.in_latest_time_window(lookback)
    )
    if give_up_waiting_after is not None:
        recent_with_inputs_missing = dg.AutomationCondition.any_deps_missing() & (
            dg.AutomationCondition.in_latest_time_window(give_up_waiting_after)
        )
        condition = condition.replace("any_deps_missing", recent_with_inputs_missing)
    # External calibration assets are sources: groups() leaves them out unless asked.
    return condition.ignore(dg.AssetSelection.groups("calibration", include_sources=True))


def level1_early_key(camera: Camera) -> dg.AssetKey:
    """The asset key of a camera's early Level 1 products."""
    return dg.AssetKey(f"level1_early_{camera.slug}")


def frames_metadata(frames: list[FrameOutcome]) -> dict[str, dg.MetadataValue]:
    """Materialization metadata of one partition: outputs, every input, frame counts."""
    count = {status: sum(f.status == status for f in frames) for status in ("made", "unchanged", "failed")}
    return {
        "frames_made": dg.MetadataValue.int(count["made"]),
        "frames_unchanged": dg.MetadataValue.int(count["unchanged"]),
        "frames_failed": dg.MetadataValue.int(count["failed"]),
        "outputs": dg.MetadataValue.json(
            [{"path": f.path, "sha256": f.sha256, "status": f.status} for f in frames if f.path]
        ),
        "input_level0_files": dg.MetadataValue.json(sorted(f.level0 for f in frames)),
        "input_calibration_files": dg.MetadataValue.json(
            sorted({(c["file"], c["version"], c["sha256"]) for f in frames for c in f.calibration})
        ),
        "not_made": dg.MetadataValue.json(
            [{"level0": f.level0, "status": f.status, "reason": f.reason} for f in frames if not f.path]
        ),
    }


FRAMES_MADE_CHECK = "frames_made"


def frames_made_check_spec(key: dg.AssetKey) -> dg.AssetCheckSpec:
    """The check that every input frame of a run's partitions became a product."""
    return dg.AssetCheckSpec(
        FRAMES_MADE_CHECK,
        asset=key,
        description="Warns when frames of the run's partitions were not made (failed, or no calibration), "
        "with each frame's reason; the other frames and later partitions are not held back.",
    )


def frames_made_check(key: dg.AssetKey, frames: list[FrameOutcome]) -> dg.AssetCheckResult:
    """Pass when every frame was made or unchanged; warn with the frames not made and why."""
    not_made = [f for f in frames if f.status not in ("made", "unchanged")]
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=FRAMES_MADE_CHECK,
        passed=not not_made,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "frames": len(frames),
            "frames_not_made": len(not_made),
            "not_made": dg.MetadataValue.json(
                [{"frame": f.level0, "status": f.status, "reason": (f.reason or "")[:500]} for f in not_made[:50]]
            ),
        },
    )


def hourly_level1_asset_kwargs(camera: Camera, key: dg.AssetKey) -> dict:
    """``dg.asset`` keywords shared by the hourly Level 1 products of a camera (early, late, quick).

    Hourly partitions, up to six hours per backfill run (punchbowl is imported once per run), the
    ``frames_made`` check, and the keywords every product asset shares (``product_asset_kwargs``).
    """
    return {
        "partitions_def": hourly_partitions,
        "backfill_policy": dg.BackfillPolicy.multi_run(max_partitions_per_run=6),
        "check_specs": [frames_made_check_spec(key)],
        **product_asset_kwargs(camera, "1"),
    }


def process_frame_partitions(
    context: dg.AssetExecutionContext,
    catalog: CatalogResource,
    camera: Camera,
    make_processor: Callable[[Session], FrameProcessor],
    metadata: Callable[[list[FrameOutcome]], dict[str, dg.MetadataValue]] = frames_metadata,
    no_calibration: str | None = None,
) -> list[FrameOutcome]:
    """Process every hourly partition of a run, log the frames not made, record each partition's metadata.

    Parameters
    ----------
    context
        The asset's execution context.
    catalog
        The catalog; one session (committed) per partition.
    camera
        The camera.
    make_processor
        The frame processor of a session.
    metadata
        The materialization metadata of one partition's frames.
    no_calibration
        When given, frames without calibration are logged as warnings with this text.

    Returns
    -------
    list[FrameOutcome]
        The frames of every partition.
    """
    outcomes: list[FrameOutcome] = []
    for partition_key in context.partition_keys:
        window = hourly_partitions.time_window_for_partition_key(partition_key)
        with catalog.session() as session:
            processor = make_processor(session)
            frames = processor.process_window(camera, naive_utc(window.start), naive_utc(window.end), partition_key)
        for frame in frames:
            if frame.status == "failed":
                context.log.error(f"{frame.level0}: {frame.reason}")
            elif frame.status == "no_calibration" and no_calibration is not None:
                context.log.warning(f"{frame.level0}: {no_calibration}: {frame.reason}")
        context.add_asset_metadata(metadata(frames), partition_key=partition_key)
        outcomes.extend(frames)
    return outcomes


def build_level1_early_asset(camera: Camera, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build the early Level 1 asset of one camera (``level1_early_core_flow``, alignment off).

    ``lookback``: how far back Declarative Automation carries late Level 0 data to Level 1.
    """
    key = level1_early_key(camera)
    calibration_deps = [
        calibration_key(kind.name, camera) for kind in CALIBRATION_KINDS.values() if camera.obs in kind.observatories
    ]
    automation = level1_automation(lookback)

    @dg.asset(
        key=key,
        description=f"Early Level 1 (X?) products of observatory {camera.obs}: quartic linearity, "
        "vignetting, PSF, despike and mask by punchbowl's level1_early_core_flow, with the calibration "
        "files the selection rule picks.",
        deps=[level0_key(camera), *calibration_deps],
        code_version=LEVEL1_EARLY_CODE_VERSION,
        pool=PUNCHBOWL_POOL,
        automation_condition=automation,
        **hourly_level1_asset_kwargs(camera, key),
    )
    def level1_early_camera(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> dg.MaterializeResult:
        version = pipeline.config.level0.file_version
        frames = process_frame_partitions(
            context,
            catalog,
            camera,
            lambda session: Level1EarlyProcessor(session, archive, version, run_id=context.run.run_id),
        )
        digests = sorted(f"{f.level0}:{f.sha256}" for f in frames)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(hashlib.sha256("|".join(digests).encode()).hexdigest()[:24]),
            check_results=[frames_made_check(key, frames)],
        )

    return level1_early_camera

