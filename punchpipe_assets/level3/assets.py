"""Level 3 assets: F-corona models ``level3_fcorona_{polarized,clear}_wfi{n}``, ``level3_fcorona_clear_nfi4``, PIM/CIM.

Each at the grain that fits it, with Dagster's built-in ``TimeWindowPartitionMapping`` windows: the
model of grid time ``t`` (a partition of the model grid, every ``level3.fcorona.spacing_hours``)
depends on the camera's Level 2 layer hours (NFI: the ``CNN`` batch windows) of the window around
``t``; an hour's ``PIM``/``CIM`` on the layers of that hour and the models of the grid points around
it (the pair bracketing each group is among them). Models run in the large-memory pool.
"""

from collections.abc import Iterator, Sequence
from datetime import timedelta

import dagster as dg

from punchpipe_assets.automation import AUTOMATION_LOOKBACK, on_new_inputs
from punchpipe_assets.calibration.assets import calibration_key
from punchpipe_assets.cameras import Camera
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.grid_models import ModelOutcome
from punchpipe_assets.level2.assets import WFI_CAMERAS, level2_layers_key
from punchpipe_assets.level2.nfi_pca_assets import LEVEL2_CNN, NFI
from punchpipe_assets.level3.fcorona import (
    LAYER_CODES,
    LEVEL3_FCORONA_CODE_VERSION,
    MODEL_CODES,
    FCoronaBuilder,
    NfiFCoronaBuilder,
)
from punchpipe_assets.level3.model_assets import build_model_grid_asset
from punchpipe_assets.level3.subtraction import (
    LEVEL3_PIM_CIM_CODE_VERSION,
    SubtractedMosaicProcessor,
    describe_models,
)
from punchpipe_assets.materialize import (
    PUNCHBOWL_LARGE_MEMORY_POOL,
    materialize_windows,
    model_metadata,
    models_made_spec,
    pool_kwargs,
    product_asset_kwargs,
)
from punchpipe_assets.partitions import hourly_partitions
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource

POLARIZATIONS = ("polarized", "clear")
LEVEL3_PIM = dg.AssetKey("level3_pim")
LEVEL3_CIM = dg.AssetKey("level3_cim")
#: Layer code of the groups each subtracted-mosaic asset makes.
SUBTRACTED_LAYER_CODES = {LEVEL3_PIM: "XP", LEVEL3_CIM: "XR"}


def fcorona_key(camera: Camera, polarization: str) -> dg.AssetKey:
    """Return the asset key of a camera's F-corona models, e.g. ``level3_fcorona_clear_wfi1``."""
    return dg.AssetKey(f"level3_fcorona_{polarization}_{camera.slug}")


def subtracted_metadata(outcomes: Sequence[ModelOutcome]) -> dict[str, dg.MetadataValue]:
    """``model_metadata`` of ``PIM``/``CIM``, with the F-corona models each was made with and their origin."""
    metadata = model_metadata(outcomes)
    metadata["input_models"] = dg.MetadataValue.json(
        sorted(
            {(m["file"], m["sha256"], m["origin"]) for o in outcomes for m in describe_models(o)},
        )
    )
    return metadata


def build_fcorona_asset(
    config: PipelineConfig, camera: Camera, polarization: str, lookback: timedelta = AUTOMATION_LOOKBACK
) -> dg.AssetsDefinition:
    """Build the F-corona model asset of one WFI camera and polarization, on the configured model grid."""
    settings = config.level3.fcorona
    code, layer = f"{MODEL_CODES[polarization]}{camera.obs}", f"{LAYER_CODES[polarization]}{camera.obs}"
    return build_model_grid_asset(
        key=fcorona_key(camera, polarization),
        settings=settings,
        source=level2_layers_key(camera),
        code_version=LEVEL3_FCORONA_CODE_VERSION,
        description=f"Level 3 {polarization} F-corona models ({code}), one every {settings.spacing_hours} h from "
        f"midnight, from the {layer} layers of the {settings.half_window_hours:g} h before and after, at least "
        f"{settings.min_inputs_per_half} a side, by punchbowl's construct_f_corona_model; too few: refused with the "
        "reason (catalog model_refusals) and tried again when more layers arrive.",
        observatory=camera.obs,
        build=lambda session, archive, config, run_id, reference_time, partition_key: FCoronaBuilder(
            session, archive, config, camera, polarization, run_id
        ).build(reference_time, partition_key),
        max_partitions_per_run=4,
        lookback=lookback,
    )


def build_nfi_fcorona_asset(config: PipelineConfig, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build ``level3_fcorona_clear_nfi4``: NFI ``CFN`` models from Level 2 ``CNN`` on ``level3.fcorona_nfi``'s grid."""
    settings = config.level3.fcorona_nfi
    return build_model_grid_asset(
        key=fcorona_key(NFI, "clear"),
        settings=settings,
        source=LEVEL2_CNN,
        code_version=LEVEL3_FCORONA_CODE_VERSION,
        description=f"Level 3 NFI F-corona models (CFN), one every {settings.spacing_hours} h from midnight, from "
        f"the Level 2 CNN of the {settings.half_window_hours:g} h before and after, at least "
        f"{settings.min_inputs_per_half} a side (at most {settings.max_inputs_per_half}, a seeded choice), by "
        "punchbowl's construct_f_corona_model; too few: refused with the reason (catalog model_refusals) and tried "
        "again when more CNN arrive.",
        observatory="N",
        build=lambda session, archive, config, run_id, reference_time, partition_key: NfiFCoronaBuilder(
            session, archive, config, run_id
        ).build(reference_time, partition_key),
        max_partitions_per_run=4,
        lookback=lookback,
    )


def build_subtracted_asset(
    config: PipelineConfig, key: dg.AssetKey, lookback: timedelta = AUTOMATION_LOOKBACK
) -> dg.AssetsDefinition:
    """Build ``level3_pim`` or ``level3_cim`` (hourly, as the Level 2 groups)."""
    spacing = config.level3.fcorona.spacing_hours
    layer_code = SUBTRACTED_LAYER_CODES[key]
    polarization = "polarized" if layer_code == "XP" else "clear"
    product = "PIM" if layer_code == "XP" else "CIM"
    # A group of hour h has its DATE-OBS in [h - one slot, h + 1 h): its models are the grid points of
    # [h - 1 h, h + 1 h + spacing), the one after it possibly still in the future.
    model_mapping = dg.TimeWindowPartitionMapping(-1, spacing, allow_nonexistent_upstream_partitions=True)

    @dg.asset(
        key=key,
        partitions_def=hourly_partitions,
        code_version=LEVEL3_PIM_CIM_CODE_VERSION,
        deps=[
            *[level2_layers_key(c) for c in WFI_CAMERAS],
            *[dg.AssetDep(fcorona_key(c, polarization), partition_mapping=model_mapping) for c in WFI_CAMERAS],
            *[calibration_key("fcorona", c) for c in WFI_CAMERAS],
        ],
        description=f"Level 3 {product}: each Level 2 {polarization} group's layers minus the two F-corona models of "
        "each camera that bracket it (the pipeline's own pair first, else a bootstrap pair), by punchbowl's "
        "level3_PIM_CIM_flow; a group waits until every camera has its pair.",
        automation_condition=on_new_inputs(lookback, made_from=[level2_layers_key(c) for c in WFI_CAMERAS]),
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=6),
        check_specs=[models_made_spec(key)],
        **product_asset_kwargs("M", "3"),
    )
    def subtracted_mosaics(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> Iterator:
        yield from materialize_windows(
            context,
            catalog,
            archive,
            key,
            lambda session, start, end, partition_key, _now: SubtractedMosaicProcessor(
                session, archive, pipeline.config, context.run.run_id, layer_codes=(layer_code,)
            ).process_window(start, end, partition_key),
            subtracted_metadata,
        )

    return subtracted_mosaics


def build_level3_assets(config: PipelineConfig, lookback: timedelta = AUTOMATION_LOOKBACK) -> list[dg.AssetsDefinition]:
    """Build the Level 3 assets of an installation.

    Six WFI F-corona model assets and the NFI one, ``level3_pim`` and ``level3_cim``, two starfield model assets,
    ``level3_ptm`` and ``level3_ctm``, ``level3_pam`` and ``level3_cam``, ``level3_vam``.
    """
    from punchpipe_assets.level3.average_assets import build_low_noise_asset, build_velocity_asset
    from punchpipe_assets.level3.starfield_assets import build_background_asset, build_starfield_asset

    return [
        *[build_fcorona_asset(config, c, p, lookback) for c in WFI_CAMERAS for p in POLARIZATIONS],
        build_nfi_fcorona_asset(config, lookback),
        *[build_subtracted_asset(config, key, lookback) for key in (LEVEL3_PIM, LEVEL3_CIM)],
        *[build_starfield_asset(config, p, lookback) for p in POLARIZATIONS],
        *[build_background_asset(config, p, lookback) for p in POLARIZATIONS],
        *[build_low_noise_asset(config, p, lookback) for p in POLARIZATIONS],
        build_velocity_asset(config, lookback),
    ]
