"""QuickPUNCH assets: ``levelq_cqm``, ``levelq_cfm``, ``levelq_ctm`` and ``levelq_qam``.

``levelq_cqm`` (hourly), ``levelq_cfm`` (model grid), ``levelq_ctm`` (hourly), ``levelq_qam`` (daily):
each at the grain that fits it, with Dagster's built-in ``TimeWindowPartitionMapping`` windows:
an hour's CQM from the quick Level 1 of that hour and the one before; the CFM of grid time ``t``
from the CQM of the ``model_window_hours`` before ``t``; an hour's CTM from its CQM and the CFM of
the two grid points at or before it; a day's 45 QAM bins from the day's CTM.
"""

import hashlib
from collections.abc import Iterator
from datetime import timedelta

import dagster as dg

from punchpipe_assets.automation import AUTOMATION_LOOKBACK, on_new_inputs
from punchpipe_assets.calibration.assets import calibration_key
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.level1.assets import level1_quick_key
from punchpipe_assets.level2.assets import (
    GROUP_INPUT_MAPPING,
    GROUPS_MADE_CHECK,
    WFI_CAMERAS,
    content_version,
    groups_check,
    process_group_partitions,
)
from punchpipe_assets.levelq.averages import LEVELQ_QAM_CODE_VERSION, QuickAverager
from punchpipe_assets.levelq.ctm import LEVELQ_CTM_CODE_VERSION, QuickCTMProcessor
from punchpipe_assets.levelq.models import LEVELQ_CFM_CODE_VERSION, QuickFCoronaBuilder
from punchpipe_assets.levelq.mosaics import LEVELQ_CQM_CODE_VERSION, QuickMosaicProcessor
from punchpipe_assets.materialize import (
    PUNCHBOWL_LARGE_MEMORY_POOL,
    frames_made_check,
    frames_made_check_spec,
    frames_metadata,
    materialize_grid_models,
    materialize_windows,
    models_made_spec,
    pool_kwargs,
    process_frame_partitions,
    product_asset_kwargs,
)
from punchpipe_assets.partitions import daily_partitions, hourly_partitions, model_grid_partitions
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource

LEVELQ_CQM = dg.AssetKey("levelq_cqm")
LEVELQ_CFM = dg.AssetKey("levelq_cfm")
LEVELQ_CTM = dg.AssetKey("levelq_ctm")
LEVELQ_QAM = dg.AssetKey("levelq_qam")


def build_levelq_assets(config: PipelineConfig, lookback: timedelta = AUTOMATION_LOOKBACK) -> list[dg.AssetsDefinition]:
    """Build the QuickPUNCH assets of an installation (the model grid follows ``levelq.model_spacing_hours``)."""
    settings = config.levelq
    spacing = settings.model_spacing_hours
    grid = model_grid_partitions(spacing)
    automation = on_new_inputs(lookback)
    kwargs = product_asset_kwargs("M", "Q")
    alphas = calibration_key("alphas", "M")

    @dg.asset(
        key=LEVELQ_CQM,
        partitions_def=hourly_partitions,
        code_version=LEVELQ_CQM_CODE_VERSION,
        deps=[*[dg.AssetDep(level1_quick_key(c), partition_mapping=GROUP_INPUT_MAPPING) for c in WFI_CAMERAS], alphas],
        description="QuickPUNCH clear mosaics (CQM) of the quick Level 1 QR1-3 of each cadence slot, by punchbowl's "
        "levelq_CQM_core_flow; incomplete groups after levelq.incomplete_wait_hours, flagged.",
        automation_condition=automation,
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=6),
        check_specs=[
            dg.AssetCheckSpec(
                GROUPS_MADE_CHECK,
                asset=LEVELQ_CQM,
                description="Warns about groups made incomplete, failed or waiting, with each missing member's reason.",
            )
        ],
        **kwargs,
    )
    def levelq_cqm(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> Iterator:
        options = pipeline.config
        outcomes = process_group_partitions(
            context,
            catalog,
            lambda session: QuickMosaicProcessor(session, archive, options, context.run.run_id),
            LEVELQ_CQM,
            {LEVELQ_CQM: (lambda o: True, ("clear",))},
        )
        yield dg.MaterializeResult(data_version=content_version(outcomes, lambda o: True))
        yield groups_check(LEVELQ_CQM, outcomes)

    window_steps = int(settings.model_window_hours // spacing)

    @dg.asset(
        key=LEVELQ_CFM,
        partitions_def=grid,
        code_version=LEVELQ_CFM_CODE_VERSION,
        deps=[dg.AssetDep(LEVELQ_CQM, partition_mapping=dg.TimeWindowPartitionMapping(-window_steps, -1))],
        description=f"QuickPUNCH F-corona models (CFM), one every {spacing} h from midnight, from the CQM of the "
        f"{settings.model_window_hours:g} h before (past only), by punchbowl's construct_f_corona_model"
        "(is_quickpunch=True); too few inputs: refused with the reason and retried when more arrive.",
        automation_condition=on_new_inputs(lookback, when_new=True),
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=4),
        check_specs=[models_made_spec(LEVELQ_CFM)],
        **kwargs,
    )
    def levelq_cfm(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> Iterator:
        yield from materialize_grid_models(
            context,
            catalog,
            grid,
            LEVELQ_CFM,
            lambda session, reference_time, partition_key: QuickFCoronaBuilder(
                session, archive, pipeline.config, context.run.run_id
            ).build(reference_time, partition_key),
            archive,
        )

    @dg.asset(
        key=LEVELQ_CTM,
        partitions_def=hourly_partitions,
        code_version=LEVELQ_CTM_CODE_VERSION,
        deps=[
            LEVELQ_CQM,
            dg.AssetDep(LEVELQ_CFM, partition_mapping=dg.TimeWindowPartitionMapping(-spacing, 0)),
            calibration_key("quick_fcorona", "M"),
        ],
        description="QuickPUNCH clear mosaics minus the F corona (CTM): each CQM minus the two newest CFM at or "
        "before it (the pipeline's own first, bootstrap ones until it has two), by punchbowl's "
        "levelq_CTM_core_flow.",
        automation_condition=on_new_inputs(lookback, made_from=[LEVELQ_CQM]),
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=6),
        check_specs=[frames_made_check_spec(LEVELQ_CTM)],
        **kwargs,
    )
    def levelq_ctm(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> Iterator:
        version = pipeline.config.level0.file_version
        frames = process_frame_partitions(
            context,
            catalog,
            None,
            lambda session: QuickCTMProcessor(session, archive, version, run_id=context.run.run_id),
            metadata=ctm_metadata,
            no_calibration="no CFM models",
        )
        digests = sorted(f"{f.level0}:{f.sha256}" for f in frames if f.sha256)
        yield dg.MaterializeResult(
            data_version=dg.DataVersion(hashlib.sha256("|".join(digests).encode()).hexdigest()[:24])
        )
        yield frames_made_check(LEVELQ_CTM, frames)

    @dg.asset(
        key=LEVELQ_QAM,
        partitions_def=daily_partitions,
        code_version=LEVELQ_QAM_CODE_VERSION,
        deps=[LEVELQ_CTM],
        description="QuickPUNCH 32-minute averages (QAM) of the CTM, 45 bins a day from midnight, by punchbowl's "
        "levelq_QAM_core_flow; complete at 4, incomplete bins after levelq.qam_wait_hours, flagged.",
        automation_condition=automation,
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        check_specs=[models_made_spec(LEVELQ_QAM)],
        **kwargs,
    )
    def levelq_qam(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> Iterator:
        yield from materialize_windows(
            context,
            catalog,
            archive,
            LEVELQ_QAM,
            lambda session, start, end, partition_key, now: QuickAverager(
                session, archive, pipeline.config, context.run.run_id
            ).process_window(start, end, partition_key, now),
            keep_waits=True,
        )

    return [levelq_cqm, levelq_cfm, levelq_ctm, levelq_qam]


def ctm_metadata(frames) -> dict[str, dg.MetadataValue]:
    """``frames_metadata``, its inputs named for what they are here (CQM files; CFM under calibration)."""
    metadata = frames_metadata(frames)
    metadata["input_cqm_files"] = metadata.pop("input_level0_files")
    metadata["input_models"] = metadata.pop("input_calibration_files")
    return metadata
