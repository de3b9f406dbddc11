"""Level 3 assets after ``PIM``/``CIM``: starfield models ``level3_starfield_{polarized,clear}``, ``PTM``/``CTM``.

The model of grid time ``t`` (a partition of the starfield grid, every ``level3.starfield.spacing_hours``,
daily by default) depends on the ``PIM``/``CIM`` hours of the window around ``t``; an hour's
``PTM``/``CTM`` on the ``PIM``/``CIM`` of that hour and the starfield models of the grid points around
it (the pair bracketing each mosaic is among them), with Dagster's built-in ``TimeWindowPartitionMapping``.
"""

from collections.abc import Iterator
from datetime import timedelta

import dagster as dg

from punchpipe_assets.automation import AUTOMATION_LOOKBACK, on_new_inputs
from punchpipe_assets.calibration.assets import calibration_key
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.grid_models import ModelOutcome
from punchpipe_assets.level3.assets import LEVEL3_CIM, LEVEL3_PIM
from punchpipe_assets.level3.background import (
    LEVEL3_PTM_CTM_CODE_VERSION,
    BackgroundSubtractedProcessor,
    describe_starfield_models,
)
from punchpipe_assets.level3.model_assets import build_model_grid_asset
from punchpipe_assets.level3.starfield import LEVEL3_STARFIELD_CODE_VERSION, STARFIELD_CODES, StarfieldBuilder
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

LEVEL3_PTM = dg.AssetKey("level3_ptm")
LEVEL3_CTM = dg.AssetKey("level3_ctm")
#: The ``PIM``/``CIM`` asset and its code, by polarization.
SUBTRACTED_BY_POLARIZATION = {"polarized": (LEVEL3_PIM, "PI"), "clear": (LEVEL3_CIM, "CI")}
BACKGROUND_BY_POLARIZATION = {"polarized": LEVEL3_PTM, "clear": LEVEL3_CTM}


def starfield_key(polarization: str) -> dg.AssetKey:
    """Return the asset key of the starfield models of a polarization, e.g. ``level3_starfield_clear``."""
    return dg.AssetKey(f"level3_starfield_{polarization}")


def build_starfield_asset(
    config: PipelineConfig, polarization: str, lookback: timedelta = AUTOMATION_LOOKBACK
) -> dg.AssetsDefinition:
    """Build the starfield model asset of one polarization, on the configured grid."""
    settings = config.level3.starfield
    source, source_code = SUBTRACTED_BY_POLARIZATION[polarization]
    return build_model_grid_asset(
        key=starfield_key(polarization),
        settings=settings,
        source=source,
        code_version=LEVEL3_STARFIELD_CODE_VERSION,
        description=f"Level 3 {polarization} starfield models ({STARFIELD_CODES[polarization]}M), one every "
        f"{settings.spacing_hours} h from midnight, from the {source_code}M of the {settings.half_window_hours:g} h "
        f"before and after, at least {settings.min_inputs_per_half} a side, by punchbowl's "
        "generate_starfield_background; too few: refused with the reason (catalog model_refusals) and tried again "
        "when more arrive.",
        observatory="M",
        build=lambda session, archive, config, run_id, reference_time, partition_key: StarfieldBuilder(
            session, archive, config, polarization, run_id
        ).build(reference_time, partition_key),
        max_partitions_per_run=2,
        lookback=lookback,
    )


def background_metadata(outcomes: list[ModelOutcome]) -> dict[str, dg.MetadataValue]:
    """``model_metadata`` of ``PTM``/``CTM``, with the starfield models each was made with and their origin."""
    metadata = model_metadata(outcomes)
    metadata["input_models"] = dg.MetadataValue.json(
        sorted({(m["file"], m["sha256"], m["origin"]) for o in outcomes for m in describe_starfield_models(o.inputs)})
    )
    return metadata


def build_background_asset(
    config: PipelineConfig, polarization: str, lookback: timedelta = AUTOMATION_LOOKBACK
) -> dg.AssetsDefinition:
    """Build ``level3_ptm`` or ``level3_ctm`` (hourly, as the ``PIM``/``CIM``)."""
    spacing = config.level3.starfield.spacing_hours
    key = BACKGROUND_BY_POLARIZATION[polarization]
    source, source_code = SUBTRACTED_BY_POLARIZATION[polarization]
    product = "PTM" if polarization == "polarized" else "CTM"
    # As for PIM/CIM: a mosaic of hour h has its DATE-OBS in [h - one slot, h + 1 h), its models are
    # among the grid points of [h - 1 h, h + 1 h + spacing).
    model_mapping = dg.TimeWindowPartitionMapping(-1, spacing, allow_nonexistent_upstream_partitions=True)

    @dg.asset(
        key=key,
        partitions_def=hourly_partitions,
        code_version=LEVEL3_PTM_CTM_CODE_VERSION,
        deps=[
            source,
            dg.AssetDep(starfield_key(polarization), partition_mapping=model_mapping),
            calibration_key("starfield", "M"),
        ],
        description=f"Level 3 {product}: each {source_code}M minus the two starfield models that bracket it (the "
        "pipeline's own pair first, else a bootstrap pair), by punchbowl's level3_core_flow (no NFI yet); a "
        "mosaic waits until its pair exists.",
        automation_condition=on_new_inputs(lookback, made_from=[source]),
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=6),
        check_specs=[models_made_spec(key)],
        **product_asset_kwargs("M", "3"),
    )
    def background_subtracted(
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
            lambda session, start, end, partition_key, _now: BackgroundSubtractedProcessor(
                session, archive, pipeline.config, context.run.run_id, layer_codes=(source_code,)
            ).process_window(start, end, partition_key),
            background_metadata,
        )

    return background_subtracted
