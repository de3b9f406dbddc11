"""Level 0 assets: one per camera, hourly partitions of acquisition time."""

import hashlib

import dagster as dg

from punchpipe_assets.cameras import CAMERAS, Camera
from punchpipe_assets.level0.formation import LEVEL0_CODE_VERSION, Level0Former, PartitionOutcome
from punchpipe_assets.materialize import PUNCHBOWL_POOL, pool_kwargs, product_asset_kwargs
from punchpipe_assets.partitions import hourly_partitions
from punchpipe_assets.quicklook import with_quicklook
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource
from punchpipe_assets.resources.catalog import naive_utc
from punchpipe_assets.telemetry.assets import telemetry_key
from punchpipe_assets.telemetry.packets import load_packet_set

IMAGE_QUALITY_CHECK = "image_quality"


def level0_key(camera: Camera) -> dg.AssetKey:
    """Return the asset key of a camera's Level 0 products."""
    return dg.AssetKey(f"level0_{camera.slug}")


def outcome_metadata(outcome: PartitionOutcome) -> dict[str, dg.MetadataValue]:
    """Materialization metadata of one partition: outputs with checksums, inputs, frame counts."""
    made = [image for image in outcome.images if image.status in ("made", "unchanged")]
    return {
        "frames_made": dg.MetadataValue.int(outcome.count("made")),
        "frames_unchanged": dg.MetadataValue.int(outcome.count("unchanged")),
        "frames_waiting": dg.MetadataValue.int(outcome.count("waiting")),
        "frames_skipped": dg.MetadataValue.int(outcome.count("skipped")),
        "frames_flagged": dg.MetadataValue.int(sum(bool(image.flags) for image in made)),
        "outputs": dg.MetadataValue.json(
            [
                {
                    "path": image.path,
                    "sha256": image.sha256,
                    "product": image.file_type,
                    "status": image.status,
                    "flags": image.flags,
                }
                for image in made
            ]
        ),
        "input_telemetry_files": dg.MetadataValue.json(
            sorted({name for image in outcome.images for name in image.telemetry_files})
        ),
        "not_formed": dg.MetadataValue.json(
            [
                {"acquisition_time": image.acquisition_time.isoformat(), "status": image.status, "reason": image.reason}
                for image in outcome.images
                if image.status in ("waiting", "skipped")
            ]
        ),
        "partition_fingerprint": dg.MetadataValue.text(outcome.fingerprint),
    }


def quality_check(camera: Camera, outcomes: list[PartitionOutcome]) -> dg.AssetCheckResult:
    """Flag images with outlier statistics or missing packets, and images that could not be formed."""
    flagged = [
        {"path": image.path, "flags": image.flags}
        for outcome in outcomes
        for image in outcome.images
        if image.flags and image.status == "made"
    ]
    skipped = [
        {"acquisition_time": image.acquisition_time.isoformat(), "reason": image.reason}
        for outcome in outcomes
        for image in outcome.images
        if image.status == "skipped"
    ]
    return dg.AssetCheckResult(
        asset_key=level0_key(camera),
        check_name=IMAGE_QUALITY_CHECK,
        passed=not flagged and not skipped,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "flagged_images": dg.MetadataValue.json(flagged),
            "not_formed": dg.MetadataValue.json(skipped),
            "flagged_count": len(flagged),
            "not_formed_count": len(skipped),
        },
    )


def build_level0_asset(camera: Camera) -> dg.AssetsDefinition:
    """Build the Level 0 asset of one camera.

    Parameters
    ----------
    camera
        The camera.

    Returns
    -------
    dagster.AssetsDefinition
        ``level0_{slug}``: every image acquired in the partition's hour, formed from the packets of
        all telemetry files that hold them; unchanged images are not rewritten.

    """
    key = level0_key(camera)

    @dg.asset(
        key=key,
        description=f"Level 0 images of observatory {camera.obs} ({camera.instrument}): decoded packets, "
        "L0 metadata and a preliminary WCS, as PUNCH_L0_* FITS files.",
        partitions_def=hourly_partitions,
        deps=[telemetry_key(camera)],
        code_version=LEVEL0_CODE_VERSION,
        **pool_kwargs(PUNCHBOWL_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=24),
        check_specs=[
            dg.AssetCheckSpec(
                IMAGE_QUALITY_CHECK, asset=key, description="Outlier statistics, missing packets, images not formed."
            )
        ],
        **product_asset_kwargs(camera.obs, "0"),
    )
    def level0_camera(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> dg.MaterializeResult:
        config = pipeline.config
        packet_set = load_packet_set(config.telemetry_definitions)
        outcomes = []
        for partition_key in context.partition_keys:
            window = hourly_partitions.time_window_for_partition_key(partition_key)
            with catalog.session() as session:
                former = Level0Former(
                    session,
                    archive,
                    config.level0,
                    packet_set,
                    landing_dir=config.landing_dir,
                    run_id=context.run.run_id,
                )
                outcome = former.form_window(camera, naive_utc(window.start), naive_utc(window.end), partition_key)
            outcomes.append(outcome)
            context.add_asset_metadata(with_quicklook(outcome_metadata(outcome), archive), partition_key=partition_key)
            context.log.info(
                f"{key.to_user_string()} {partition_key}: made {outcome.count('made')}, "
                f"unchanged {outcome.count('unchanged')}, waiting {outcome.count('waiting')}, "
                f"skipped {outcome.count('skipped')}"
            )
        data_version = hashlib.sha256("".join(o.fingerprint for o in outcomes).encode()).hexdigest()[:24]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(data_version),
            check_results=[quality_check(camera, outcomes)],
        )

    return level0_camera


level0_assets = [build_level0_asset(camera) for camera in CAMERAS]
