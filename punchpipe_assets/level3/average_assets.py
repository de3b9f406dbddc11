"""Level 3 average assets: low-noise ``level3_pam``/``level3_cam`` (daily) and velocity maps ``level3_vam`` (6-hourly).

A day's 45 low-noise bins depend on the day's ``PTM``/``CTM`` hours; a 6-hour velocity bin (a
partition of a 6-hour grid from midnight, keyed by the bin's start) on the ``PTM`` hours of the bin
(Dagster's built-in time-window mappings between the partition sets).
"""

from collections.abc import Iterator
from datetime import timedelta

import dagster as dg

from punchpipe_assets.automation import AUTOMATION_LOOKBACK, on_new_inputs
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.level3.averages import (
    LEVEL3_LOW_NOISE_CODE_VERSION,
    LEVEL3_VAM_CODE_VERSION,
    LOW_NOISE_CODES,
    VELOCITY_BIN,
    LowNoiseAverager,
    VelocityBuilder,
)
from punchpipe_assets.level3.starfield_assets import BACKGROUND_BY_POLARIZATION, LEVEL3_PTM
from punchpipe_assets.materialize import (
    PUNCHBOWL_LARGE_MEMORY_POOL,
    materialize_grid_models,
    materialize_windows,
    models_made_spec,
    pool_kwargs,
    product_asset_kwargs,
)
from punchpipe_assets.partitions import daily_partitions, model_grid_partitions
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource

LEVEL3_PAM = dg.AssetKey("level3_pam")
LEVEL3_CAM = dg.AssetKey("level3_cam")
LEVEL3_VAM = dg.AssetKey("level3_vam")
LOW_NOISE_BY_POLARIZATION = {"polarized": LEVEL3_PAM, "clear": LEVEL3_CAM}
#: 6-hour velocity bins from midnight, keyed by the bin's start.
velocity_partitions = model_grid_partitions(6)


def build_low_noise_asset(
    config: PipelineConfig, polarization: str, lookback: timedelta = AUTOMATION_LOOKBACK
) -> dg.AssetsDefinition:
    """Build ``level3_pam`` or ``level3_cam``: a day's 45 bins of 32 minutes."""
    key = LOW_NOISE_BY_POLARIZATION[polarization]
    code, input_code, complete = LOW_NOISE_CODES[polarization]
    wait = config.level3.low_noise.wait_hours

    @dg.asset(
        key=key,
        partitions_def=daily_partitions,
        code_version=LEVEL3_LOW_NOISE_CODE_VERSION,
        deps=[BACKGROUND_BY_POLARIZATION[polarization]],
        description=f"Level 3 low-noise {code}M: 32-minute averages of the {input_code}M, 45 bins a day from midnight, "
        f"by punchbowl's generate_level3_low_noise_flow; complete at {complete}, an incomplete bin made "
        f"{wait:g} h after its end, flagged; every bin with an input is made.",
        automation_condition=on_new_inputs(lookback),
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        check_specs=[models_made_spec(key)],
        **product_asset_kwargs("M", "3"),
    )
    def low_noise(
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
            lambda session, start, end, partition_key, now: LowNoiseAverager(
                session, archive, pipeline.config, polarization, context.run.run_id
            ).process_window(start, end, partition_key, now),
            keep_waits=True,
        )

    return low_noise


def build_velocity_asset(config: PipelineConfig, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build ``level3_vam``: one velocity map per 6-hour bin of Level 3 ``PTM``."""
    settings = config.level3.velocity

    @dg.asset(
        key=LEVEL3_VAM,
        partitions_def=velocity_partitions,
        code_version=LEVEL3_VAM_CODE_VERSION,
        deps=[LEVEL3_PTM],
        description="Level 3 velocity maps (VAM): the Level 3 PTM of each 6-hour bin from midnight, by punchbowl's "
        f"track_velocity with the bin's centre as reference time, once at least {settings.min_inputs} exist "
        "(fewer: refused with the reason, tried again when more arrive).",
        automation_condition=on_new_inputs(lookback),
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=4),
        check_specs=[models_made_spec(LEVEL3_VAM)],
        **product_asset_kwargs("M", "3"),
    )
    def level3_vam(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> Iterator:
        yield from materialize_grid_models(
            context,
            catalog,
            velocity_partitions,
            LEVEL3_VAM,
            lambda session, start, partition_key: VelocityBuilder(
                session, archive, pipeline.config, context.run.run_id
            ).build(start + VELOCITY_BIN / 2, partition_key),
            archive,
        )

    return level3_vam
