"""Level 1 early assets (``X?`` products): one per camera, hourly partitions like Level 0."""

import hashlib
from datetime import timedelta

import dagster as dg

from punchpipe_assets.assets.calibration import calibration_key
from punchpipe_assets.assets.level0 import PUNCHBOWL_POOL, level0_key, naive_utc
from punchpipe_assets.calibration import CALIBRATION_KINDS
from punchpipe_assets.cameras import CAMERAS, Camera
from punchpipe_assets.level1 import LEVEL1_EARLY_CODE_VERSION, FrameOutcome, Level1EarlyProcessor
from punchpipe_assets.partitions import hourly_partitions
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource

# Late data (replays) are carried to Level 1 for this many days, not only in the newest hour.
AUTOMATION_LOOKBACK = timedelta(days=3)


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


def build_level1_early_asset(camera: Camera) -> dg.AssetsDefinition:
    """Build the early Level 1 asset of one camera (``level1_early_core_flow``, alignment off)."""
    key = level1_early_key(camera)
    calibration_deps = [
        calibration_key(kind.name, camera) for kind in CALIBRATION_KINDS.values() if camera.obs in kind.observatories
    ]
    automation = dg.AutomationCondition.eager().replace(
        "in_latest_time_window", dg.AutomationCondition.in_latest_time_window(AUTOMATION_LOOKBACK)
    )

    @dg.asset(
        key=key,
        group_name="level1",
        description=f"Early Level 1 (X?) products of observatory {camera.obs}: quartic linearity, "
        "vignetting, PSF, despike and mask by punchbowl's level1_early_core_flow, with the calibration "
        "files the selection rule picks.",
        partitions_def=hourly_partitions,
        deps=[level0_key(camera), *calibration_deps],
        code_version=LEVEL1_EARLY_CODE_VERSION,
        pool=PUNCHBOWL_POOL,
        automation_condition=automation,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=6),
        retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
        kinds={"fits", "punchbowl"},
        tags={"level": "1", "observatory": camera.obs},
    )
    def level1_early_camera(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> dg.MaterializeResult:
        version = pipeline.config.level0.file_version
        digests = []
        for partition_key in context.partition_keys:
            window = hourly_partitions.time_window_for_partition_key(partition_key)
            with catalog.session() as session:
                processor = Level1EarlyProcessor(session, archive, version, run_id=context.run.run_id)
                frames = processor.process_window(camera, naive_utc(window.start), naive_utc(window.end), partition_key)
            for frame in frames:
                if frame.status == "failed":
                    context.log.error(f"{frame.level0}: {frame.reason}")
            context.add_asset_metadata(frames_metadata(frames), partition_key=partition_key)
            digests.extend(f"{f.level0}:{f.sha256}" for f in frames)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(hashlib.sha256("|".join(sorted(digests)).encode()).hexdigest()[:24])
        )

    return level1_early_camera


level1_early_assets = [build_level1_early_asset(camera) for camera in CAMERAS]
