"""Level 1 assets of every camera: early (``X?``), stray-light models, late and quick products.

``level1_early_{camera}`` (hourly) depends on its Level 0 hour and the camera's calibration files;
``level1_stray_light_{camera}`` (daily, a model at 12:00 UTC of each day) depends on the day's
early Level 1 hours; ``level1_late_{camera}`` (hourly) on its early hour and the models of the day
before, the day and the day after (the two bracketing models lie among them);
``level1_quick_{camera}`` (hourly) on its early hour and the models of the two days before (quick
look cannot wait for the day's own model). NFI has no static stray-light models (see
``punchpipe_assets.level1.stray_light``); ``level1_nfi_stray_light_nfi4`` (hourly) removes NFI's
dynamic stray light from its early clear frames (``XR4`` -> ``ZR4``, no calibration file).
"""

import hashlib
from datetime import timedelta

import dagster as dg

from punchpipe_assets.automation import AUTOMATION_LOOKBACK, eager_within, on_new_inputs
from punchpipe_assets.calibration.assets import calibration_key
from punchpipe_assets.calibration.kinds import CALIBRATION_KINDS
from punchpipe_assets.cameras import CAMERA_BY_OBS, Camera
from punchpipe_assets.level0.assets import level0_key
from punchpipe_assets.level1.early import LEVEL1_EARLY_CODE_VERSION, Level1EarlyProcessor
from punchpipe_assets.level1.late import LEVEL1_LATE_CODE_VERSION, LEVEL1_QUICK_CODE_VERSION, Level1LateProcessor
from punchpipe_assets.level1.nfi_stray_light import LEVEL1_NFI_STRAY_LIGHT_CODE_VERSION, Level1NfiStrayLightProcessor
from punchpipe_assets.level1.stray_light import (
    LEVEL1_STRAY_LIGHT_CODE_VERSION,
    STRAY_LIGHT_CAMERAS,
    StrayLightModelBuilder,
    model_reference_time,
)
from punchpipe_assets.materialize import (
    PUNCHBOWL_LARGE_MEMORY_POOL,
    PUNCHBOWL_POOL,
    frames_made_check,
    frames_made_check_spec,
    frames_metadata,
    hourly_level1_asset_kwargs,
    pool_kwargs,
    process_frame_partitions,
    product_asset_kwargs,
)
from punchpipe_assets.partitions import daily_partitions
from punchpipe_assets.products import FrameOutcome
from punchpipe_assets.quicklook import with_quicklook
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource
from punchpipe_assets.resources.catalog import naive_utc

#: The offsets of a ``TimeWindowPartitionMapping`` count downstream partitions: hours here, not days.
HOURS_PER_DAY = 24
#: Late Level 1 needs the models of the day before, the day and the day after its hour (the day
#: after has no model partition yet for the newest hours).
LATE_MODEL_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-HOURS_PER_DAY, end_offset=HOURS_PER_DAY, allow_nonexistent_upstream_partitions=True
)
#: Quick Level 1 uses the models of the two days before its hour's day.
QUICK_MODEL_MAPPING = dg.TimeWindowPartitionMapping(start_offset=-2 * HOURS_PER_DAY, end_offset=-HOURS_PER_DAY)


def level1_early_key(camera: Camera) -> dg.AssetKey:
    """Return the asset key of a camera's early Level 1 products."""
    return dg.AssetKey(f"level1_early_{camera.slug}")


def build_level1_early_asset(camera: Camera, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build the early Level 1 asset of one camera (``level1_early_core_flow``, alignment off).

    ``lookback``: how far back Declarative Automation carries late Level 0 data to Level 1.
    """
    key = level1_early_key(camera)
    calibration_deps = [
        calibration_key(kind.name, camera) for kind in CALIBRATION_KINDS.values() if camera.obs in kind.observatories
    ]
    automation = eager_within(lookback)

    @dg.asset(
        key=key,
        description=f"Early Level 1 (X?) products of observatory {camera.obs}: quartic linearity, "
        "vignetting, PSF, despike and mask by punchbowl's level1_early_core_flow, with the calibration "
        "files the selection rule picks.",
        deps=[level0_key(camera), *calibration_deps],
        code_version=LEVEL1_EARLY_CODE_VERSION,
        **pool_kwargs(PUNCHBOWL_POOL),
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


def level1_stray_light_key(camera: Camera) -> dg.AssetKey:
    """Return the asset key of a camera's stray-light models."""
    return dg.AssetKey(f"level1_stray_light_{camera.slug}")


def level1_late_key(camera: Camera) -> dg.AssetKey:
    """Return the asset key of a camera's late Level 1 products."""
    return dg.AssetKey(f"level1_late_{camera.slug}")


def level1_quick_key(camera: Camera) -> dg.AssetKey:
    """Return the asset key of a camera's quick Level 1 products."""
    return dg.AssetKey(f"level1_quick_{camera.slug}")


def _data_version(frames: list[FrameOutcome]) -> dg.DataVersion:
    digests = sorted(f"{f.level0}:{f.sha256}" for f in frames if f.sha256)  # content only, not made/unchanged
    return dg.DataVersion(hashlib.sha256("|".join(digests).encode()).hexdigest()[:24])


def late_metadata(frames: list[FrameOutcome]) -> dict[str, dg.MetadataValue]:
    """``frames_metadata`` of early Level 1, its inputs named for what they are here (early files)."""
    metadata = frames_metadata(frames)
    metadata["input_level1_early_files"] = metadata.pop("input_level0_files")
    return metadata


def build_level1_stray_light_asset(camera: Camera, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build the stray-light model asset of one camera (``estimate_stray_light``, daily at 12:00 UTC).

    Refused and failed models are recorded with the reason in the metadata (``not_made``), the run
    log and the ``frames_made`` check (a warning), as frames are.
    """
    key = level1_stray_light_key(camera)

    @dg.asset(
        key=key,
        description=f"Stray-light models (SR, SM/SZ/SP) of observatory {camera.obs}: one per day at 12:00 UTC "
        "from the early Level 1 frames of a window around it, by punchbowl's estimate_stray_light.",
        partitions_def=daily_partitions,
        deps=[level1_early_key(camera), calibration_key("mask", camera)],
        code_version=LEVEL1_STRAY_LIGHT_CODE_VERSION,
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        # Eager waits for every early hour of the day; a day older than a day is modelled with
        # what exists (an hour without telemetry never gets an early partition).
        automation_condition=eager_within(lookback, give_up_waiting_after=timedelta(days=1)),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        check_specs=[frames_made_check_spec(key)],
        **product_asset_kwargs(camera.obs, "1"),
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
            context.add_asset_metadata(with_quicklook(metadata, archive), partition_key=partition_key)
            outcomes.extend(models)
        return dg.MaterializeResult(
            data_version=_data_version(outcomes), check_results=[frames_made_check(key, outcomes)]
        )

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
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        # Frames without their two models are recorded and made when a model arrives: missing
        # model partitions (none exist before the pipeline's first model) must not hold the hour back.
        # A new model requests only the hours that have early frames to apply it to.
        automation_condition=on_new_inputs(lookback, made_from=[level1_early_key(camera)]),
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


def level1_nfi_stray_light_key(camera: Camera) -> dg.AssetKey:
    """Return the asset key of NFI's dynamic-stray-light-removed Level 1 products (``ZR4``)."""
    return dg.AssetKey(f"level1_nfi_stray_light_{camera.slug}")


def build_level1_nfi_stray_light_asset(
    camera: Camera, lookback: timedelta = AUTOMATION_LOOKBACK
) -> dg.AssetsDefinition:
    """Build the NFI dynamic-stray-light asset (``level1_nfi_core_flow``, one call per early clear frame)."""
    key = level1_nfi_stray_light_key(camera)

    @dg.asset(
        key=key,
        description=f"Level 1 ZR products of observatory {camera.obs}: dynamic stray light removed from each "
        "early clear frame (XR) by punchbowl's level1_nfi_core_flow, arguments from level1.nfi_stray_light.",
        deps=[level1_early_key(camera)],
        code_version=LEVEL1_NFI_STRAY_LIGHT_CODE_VERSION,
        # Measured: one flight call (2048 px, punchbowl's defaults) peaks at 1.8 GB RSS, the punchbowl pool's class.
        **pool_kwargs(PUNCHBOWL_POOL),
        automation_condition=eager_within(lookback),
        **hourly_level1_asset_kwargs(camera, key),
    )
    def level1_nfi_stray_light_camera(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> dg.MaterializeResult:
        config = pipeline.config
        frames = process_frame_partitions(
            context,
            catalog,
            camera,
            lambda session: Level1NfiStrayLightProcessor(
                session,
                archive,
                config.level1.nfi_stray_light,
                config.level0.file_version,
                run_id=context.run.run_id,
            ),
            metadata=late_metadata,
        )
        return dg.MaterializeResult(data_version=_data_version(frames), check_results=[frames_made_check(key, frames)])

    return level1_nfi_stray_light_camera


def build_level1_late_assets(lookback: timedelta = AUTOMATION_LOOKBACK) -> list[dg.AssetsDefinition]:
    """Stray-light, late and quick Level 1 assets of every WFI camera, and NFI's dynamic stray light."""
    return [
        *[
            build(camera, lookback)
            for camera in STRAY_LIGHT_CAMERAS
            for build in (build_level1_stray_light_asset, build_level1_late_asset, build_level1_quick_asset)
        ],
        build_level1_nfi_stray_light_asset(CAMERA_BY_OBS["4"], lookback),
    ]
