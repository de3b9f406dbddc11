"""Stray-light models, late and quick Level 1 assets: one of each per WFI camera.

``level1_stray_light_{camera}`` (daily, a model at 12:00 UTC of each day) depends on the day's
early Level 1 hours; ``level1_late_{camera}`` (hourly) on its early hour and the models of the day
before, the day and the day after (the two bracketing models lie among them);
``level1_quick_{camera}`` (hourly) on its early hour and the models of the two days before (quick
look cannot wait for the day's own model). NFI has none of them (see ``punchpipe_assets.level1_late``).
"""

import hashlib
from datetime import timedelta

import dagster as dg

from punchpipe_assets.assets.calibration import calibration_key
from punchpipe_assets.assets.level0 import naive_utc, product_asset_kwargs
from punchpipe_assets.assets.level1 import (
    AUTOMATION_LOOKBACK,
    frames_made_check,
    frames_metadata,
    hourly_level1_asset_kwargs,
    level1_automation,
    level1_early_key,
    process_frame_partitions,
)
from punchpipe_assets.cameras import Camera
from punchpipe_assets.level1 import FrameOutcome
from punchpipe_assets.level1_late import (
    LEVEL1_LATE_CODE_VERSION,
    LEVEL1_QUICK_CODE_VERSION,
    LEVEL1_STRAY_LIGHT_CODE_VERSION,
    STRAY_LIGHT_CAMERAS,
    Level1LateProcessor,
    StrayLightModelBuilder,
    model_reference_time,
)
from punchpipe_assets.partitions import daily_partitions, hourly_partitions
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource

#: Pool of the steps that hold several GB: stray-light estimation (every input frame of a window
#: in shared memory) and late/quick Level 1 (two 30-bin 2048x2048 models: peaks near 6 GB).
#: dagster.yaml should limit it to 1 on a 24 GB machine (2 from about 32 GB), e.g.
#: ``concurrency: {pools: {granularity: op}}`` with ``dagster instance concurrency set
#: punchbowl_large_memory 1``.
PUNCHBOWL_LARGE_MEMORY_POOL = "punchbowl_large_memory"
#: Late Level 1 needs the models of the day before, the day and the day after its hour.
LATE_MODEL_MAPPING = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=1)
#: Quick Level 1 uses the models of the two days before its hour's day.
QUICK_MODEL_MAPPING = dg.TimeWindowPartitionMapping(start_offset=-2, end_offset=-1)


def level1_stray_light_key(camera: Camera) -> dg.AssetKey:
    """The asset key of a camera's stray-light models."""
    return dg.AssetKey(f"level1_stray_light_{camera.slug}")


def level1_late_key(camera: Camera) -> dg.AssetKey:
    """The asset key of a camera's late Level 1 products."""
    return dg.AssetKey(f"level1_late_{camera.slug}")


def level1_quick_key(camera: Camera) -> dg.AssetKey:
    """The asset key of a camera's quick Level 1 products."""
    return dg.AssetKey(f"level1_quick_{camera.slug}")


def _data_version(frames: list[FrameOutcome]) -> dg.DataVersion:
    digests = sorted(f"{f.level0}:{f.status}:{f.sha256}" for f in frames)
    return dg.DataVersion(hashlib.sha256("|".join(digests).encode()).hexdigest()[:24])


def late_metadata(frames: list[FrameOutcome]) -> dict[str, dg.MetadataValue]:
    """``frames_metadata`` of early Level 1, its inputs named for what they are here (early files)."""
    metadata = frames_metadata(frames)
    metadata["input_level1_early_files"] = metadata.pop("input_level0_files")
    return metadata


def build_level1_stray_light_asset(camera: Camera, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build the stray-light model asset of one camera (``estimate_stray_light``, daily at 12:00 UTC)."""

    @dg.asset(
        key=level1_stray_light_key(camera),
        description=f"Stray-light models (SR, SM/SZ/SP) of observatory {camera.obs}: one per day at 12:00 UTC "
        "from the early Level 1 frames of a window around it, by punchbowl's estimate_stray_light.",
        partitions_def=daily_partitions,
        deps=[level1_early_key(camera), calibration_key("mask", camera)],
        code_version=LEVEL1_STRAY_LIGHT_CODE_VERSION,
        pool=PUNCHBOWL_LARGE_MEMORY_POOL,
        # Eager waits for every early hour of the day; a day older than a day is modelled with
        # what exists (an hour without telemetry never gets an early partition).
        automation_condition=level1_automation(lookback, give_up_waiting_after=timedelta(days=1)),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        **product_asset_kwargs(camera, "1"),
    )
    def level1_stray_light_camera(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> dg.MaterializeResult:
        config = pipeline.config
        outcomes: list[FrameOutcome] = []
        for partition_key in context.partition_keys:
            window = daily_partitions.time_window_for_partition_key(partition_key)
            reference_time = model_reference_time(naive_utc(window.start))
            with catalog.session() as session:
                builder = StrayLightModelBuilder(
                    session, archive, config.stray_light, config.level0.file_version, run_id=context.run.run_id
                )
                models, inputs = builder.process_day(camera, reference_time, partition_key)
                input_files = sorted({(p.path.rsplit("/", 1)[-1], p.sha256) for p in inputs})
            for model in models:
                if model.status in ("failed", "refused"):
                    log = context.log.error if model.status == "failed" else context.log.warning
                    log(f"{model.level0}: {model.status}: {model.reason}")
            metadata = frames_metadata(models)
            metadata.pop("input_level0_files")  # the models themselves, listed under outputs/not_made
            metadata["models_refused"] = dg.MetadataValue.int(sum(m.status == "refused" for m in models))
            metadata["input_level1_early_files"] = dg.MetadataValue.json(input_files)
            context.add_asset_metadata(metadata, partition_key=partition_key)
            outcomes.extend(models)
        return dg.MaterializeResult(data_version=_data_version(outcomes))

    return level1_stray_light_camera


def _build_late_asset(camera: Camera, quick: bool, lookback: timedelta) -> dg.AssetsDefinition:
    key = level1_quick_key(camera) if quick else level1_late_key(camera)
    mapping = QUICK_MODEL_MAPPING if quick else LATE_MODEL_MAPPING
    if quick:
        description = (
            f"Quick Level 1 (QR) products of observatory {camera.obs}: clear early frames minus the two newest "
            "stray-light models of the days before, by punchbowl's level1_late_core_flow(output_as_Q_file=True)."
        )
    else:
        description = (
            f"Late Level 1 (PM/PZ/PP/CR) products of observatory {camera.obs}: early frames minus the two "
            "stray-light models bracketing them, masked, by punchbowl's level1_late_core_flow."
        )

    @dg.asset(
        key=key,
        description=description,
        deps=[
            level1_early_key(camera),
            dg.AssetDep(level1_stray_light_key(camera), partition_mapping=mapping),
            calibration_key("mask", camera),
        ],
        code_version=LEVEL1_QUICK_CODE_VERSION if quick else LEVEL1_LATE_CODE_VERSION,
        pool=PUNCHBOWL_LARGE_MEMORY_POOL,
        automation_condition=level1_automation(lookback),
        **hourly_level1_asset_kwargs(camera, key),
    )
    def level1_late_camera(
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
            lambda session: Level1LateProcessor(session, archive, version, run_id=context.run.run_id, quick=quick),
            metadata=late_metadata,
            no_calibration="no stray-light models",
        )
        return dg.MaterializeResult(data_version=_data_version(frames), check_results=[frames_made_check(key, frames)])

    return level1_late_camera


def build_level1_late_asset(camera: Camera, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build the late Level 1 asset of one camera (``level1_late_core_flow``, two bracketing models)."""
    return _build_late_asset(camera, quick=False, lookback=lookback)


def build_level1_quick_asset(camera: Camera, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build the quick Level 1 asset of one camera (``QR``, the two newest models not after the frame)."""
    return _build_late_asset(camera, quick=True, lookback=lookback)


def build_level1_late_assets(lookback: timedelta = AUTOMATION_LOOKBACK) -> list[dg.AssetsDefinition]:
    """Stray-light, late and quick Level 1 assets of every WFI camera."""
    return [
        build(camera, lookback)
        for camera in STRAY_LIGHT_CAMERAS
        for build in (build_level1_stray_light_asset, build_level1_late_asset, build_level1_quick_asset)
    ]
