"""The asset factory that every Level 3 model grid shares (F-corona ``PF``/``CF``, starfield ``PSM``/``CSM``).

A model of grid time ``t`` (a partition of the model grid, every ``spacing_hours`` from midnight)
depends on the source partitions of the window around ``t`` through Dagster's built-in
``TimeWindowPartitionMapping``; it runs in the large-memory pool, is materialized as soon as new
inputs arrive (``on_new_inputs``), and records refusals in its ``models_made`` check.
"""

import math
from collections.abc import Callable, Iterator
from datetime import timedelta

import dagster as dg
from sqlalchemy.orm import Session

from punchpipe_assets.automation import AUTOMATION_LOOKBACK, on_new_inputs
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.grid_models import ModelOutcome
from punchpipe_assets.level3.settings import GridWindowSettings
from punchpipe_assets.materialize import (
    PUNCHBOWL_LARGE_MEMORY_POOL,
    materialize_grid_models,
    models_made_spec,
    pool_kwargs,
    product_asset_kwargs,
)
from punchpipe_assets.partitions import model_grid_partitions
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource

#: ``build(session, archive, config, run_id, reference_time, partition_key)`` makes or refuses one model.
ModelBuild = Callable[[Session, ArchiveResource, PipelineConfig, str, object, str], ModelOutcome]


def build_model_grid_asset(
    *,
    key: dg.AssetKey,
    settings: GridWindowSettings,
    source: dg.AssetKey,
    code_version: str,
    description: str,
    observatory: str,
    build: ModelBuild,
    max_partitions_per_run: int,
    lookback: timedelta = AUTOMATION_LOOKBACK,
) -> dg.AssetsDefinition:
    """Build a model-grid asset on ``settings``' grid, fed by ``source`` over the window around each grid time.

    Parameters
    ----------
    key, code_version, description
        The asset's key, code version and description (shown in the UI).
    settings
        The grid's spacing and half window (validated configuration).
    source
        The asset whose partitions within the half window on each side feed a model.
    observatory
        The ``kinds`` tag of the products (camera number, or ``M`` for mosaics).
    build
        Makes (or refuses, with the reason) the model of one grid partition.
    max_partitions_per_run
        Grid points per backfill run (models are heavy: few per run).
    lookback
        How far back automation materializes models on new inputs.

    """
    grid = model_grid_partitions(settings.spacing_hours)
    steps = math.ceil(settings.half_window_hours / settings.spacing_hours)

    @dg.asset(
        key=key,
        partitions_def=grid,
        code_version=code_version,
        deps=[
            dg.AssetDep(
                source,
                partition_mapping=dg.TimeWindowPartitionMapping(
                    -steps, steps, allow_nonexistent_upstream_partitions=True
                ),
            )
        ],
        description=description,
        automation_condition=on_new_inputs(lookback),
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=max_partitions_per_run),
        check_specs=[models_made_spec(key)],
        **product_asset_kwargs(observatory, "3"),
    )
    def grid_models(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> Iterator:
        yield from materialize_grid_models(
            context,
            catalog,
            grid,
            key,
            lambda session, reference_time, partition_key: build(
                session, archive, pipeline.config, context.run.run_id, reference_time, partition_key
            ),
            archive,
        )

    return grid_models
