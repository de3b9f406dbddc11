"""Level 2 assets: the trefoil mosaics ``level2_ptm``/``level2_ctm`` and the per-camera layers, one multi-asset.

One ``level2_core_flow`` call per group makes the mosaic and the layers (``XP{n}``/``XR{n}``) that
Level 3 consumes, so they are materialized together; Level 3 depends on ``level2_layers_wfi{n}``,
not on a mosaic. Hourly partitions: a group belongs to the hour its cadence slot ends in, so an
hour depends on the late Level 1 of that hour and the one before.
"""

import hashlib
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

import dagster as dg

from punchpipe_assets.automation import AUTOMATION_LOOKBACK, on_new_inputs
from punchpipe_assets.calibration.assets import calibration_key
from punchpipe_assets.cameras import CAMERAS, Camera
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.level1.assets import level1_late_key
from punchpipe_assets.level2.mosaics import LEVEL2_CODE_VERSION, GroupOutcome, GroupProcessor
from punchpipe_assets.materialize import PUNCHBOWL_LARGE_MEMORY_POOL, pool_kwargs, product_asset_kwargs
from punchpipe_assets.partitions import hourly_partitions
from punchpipe_assets.quicklook import with_quicklook
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource
from punchpipe_assets.resources.catalog import naive_utc, utcnow
from punchpipe_assets.sensors.waits import record_waits

WFI_CAMERAS: tuple[Camera, ...] = tuple(camera for camera in CAMERAS if camera.instrument == "WFI")
LEVEL2_PTM = dg.AssetKey("level2_ptm")
LEVEL2_CTM = dg.AssetKey("level2_ctm")
#: An hour's groups have members in that hour and, for a slot that began before it, the hour before.
GROUP_INPUT_MAPPING = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=0)
GROUPS_MADE_CHECK = "groups_made"


def level2_layers_key(camera: Camera) -> dg.AssetKey:
    """Return the asset key of a camera's Level 2 layers (``XP{n}``, ``XR{n}``)."""
    return dg.AssetKey(f"level2_layers_{camera.slug}")


def group_metadata(
    outcomes: Sequence[GroupOutcome], keep: Callable[[dict], bool], kinds: Sequence[str] = ("polarized", "clear")
) -> dict[str, dg.MetadataValue]:
    """Materialization metadata of one partition for one output: outputs, inputs, group counts (of ``kinds``)."""
    outcomes = [o for o in outcomes if o.kind in kinds]
    count = {s: sum(o.status == s for o in outcomes) for s in ("made", "unchanged", "waiting", "failed", "empty")}
    outputs = [dict(output, incomplete=o.flagged) for o in outcomes for output in o.outputs if keep(output)]
    return {
        "groups_made": dg.MetadataValue.int(count["made"]),
        "groups_unchanged": dg.MetadataValue.int(count["unchanged"]),
        "groups_waiting": dg.MetadataValue.int(count["waiting"]),
        "groups_failed": dg.MetadataValue.int(count["failed"]),
        "groups_incomplete": dg.MetadataValue.int(sum(o.flagged for o in outcomes)),
        "outputs": dg.MetadataValue.json(outputs),
        "input_files": dg.MetadataValue.json(
            sorted({(i["file"], i["version"], i["sha256"], i["origin"]) for o in outcomes for i in o.inputs})
        ),
        "not_made": dg.MetadataValue.json(
            [
                {
                    "group": f"{o.kind} {o.slot_start:%Y-%m-%dT%H:%M:%S}",
                    "status": o.status,
                    "reason": (o.reason or "")[:500],
                    "missing": o.missing,
                }
                for o in outcomes
                if o.status in ("waiting", "failed", "empty")
            ]
        ),
    }


def content_version(outcomes: Sequence[GroupOutcome], keep: Callable[[dict], bool]) -> dg.DataVersion:
    """Compute a data version from the outputs' content alone (names and checksums)."""
    digests = sorted(f"{o['path']}:{o['sha256']}" for outcome in outcomes for o in outcome.outputs if keep(o))
    return dg.DataVersion(hashlib.sha256("|".join(digests).encode()).hexdigest()[:24])


def groups_check(key: dg.AssetKey, outcomes: Sequence[GroupOutcome]) -> dg.AssetCheckResult:
    """Warn about groups made incomplete, failed or still waiting, with their missing members."""
    problems = [o for o in outcomes if o.status in ("failed", "waiting") or o.flagged]
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=GROUPS_MADE_CHECK,
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "groups": len(outcomes),
            "problems": dg.MetadataValue.json(
                [
                    {
                        "group": f"{o.slot_start:%Y-%m-%dT%H:%M:%S}",
                        "status": "incomplete" if o.flagged else o.status,
                        "missing": o.missing,
                        "reason": (o.reason or "")[:300],
                    }
                    for o in problems[:50]
                ]
            ),
        },
    )


def process_group_partitions(
    context: dg.AssetExecutionContext,
    catalog: CatalogResource,
    make_processor: Callable,
    wait_key: dg.AssetKey,
    outputs: dict[dg.AssetKey, tuple[Callable[[dict], bool], Sequence[str]]],
) -> list[GroupOutcome]:
    """Process every hourly partition of a run: make its groups, record waits, log, add metadata per output."""
    everything: list[GroupOutcome] = []
    for partition_key in context.partition_keys:
        window = hourly_partitions.time_window_for_partition_key(partition_key)
        now = utcnow()
        with catalog.session() as session:
            processor = make_processor(session)
            outcomes = processor.process_window(naive_utc(window.start), naive_utc(window.end), partition_key)
            waits = [
                (o.deadline, o.reason) for o in outcomes if o.status == "waiting" and o.deadline and o.deadline > now
            ]
            record_waits(session, wait_key, partition_key, waits)
        for outcome in outcomes:
            if outcome.status == "failed":
                context.log.error(f"{outcome.kind} group {outcome.slot_start:%Y-%m-%dT%H:%M:%S}: {outcome.reason}")
            elif outcome.flagged and outcome.status == "made":
                context.log.warning(
                    f"{outcome.kind} group {outcome.slot_start:%Y-%m-%dT%H:%M:%S} made incomplete: {outcome.missing}"
                )
        for key, (keep, kinds) in outputs.items():
            context.add_asset_metadata(
                with_quicklook(group_metadata(outcomes, keep, kinds), processor.archive),
                asset_key=key,
                partition_key=partition_key,
            )
        everything.extend(outcomes)
    return everything


def build_level2_assets(config: PipelineConfig, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build the Level 2 multi-asset: ``level2_ptm``, ``level2_ctm`` and ``level2_layers_wfi1..3``."""
    automation = on_new_inputs(lookback)
    late = [dg.AssetDep(level1_late_key(c), partition_mapping=GROUP_INPUT_MAPPING) for c in WFI_CAMERAS]
    masks = [calibration_key("mask", c) for c in WFI_CAMERAS]
    alphas = calibration_key("alphas", "M")
    common = {
        "group_name": "level2",
        "code_version": LEVEL2_CODE_VERSION,
        "automation_condition": automation,
        "kinds": {"fits", "punchbowl"},
        "partitions_def": hourly_partitions,
    }
    specs = [
        dg.AssetSpec(
            LEVEL2_PTM,
            deps=[*late, *masks, alphas],
            tags={"level": "2", "observatory": "M"},
            description="Level 2 polarized trefoil mosaics (PTM) of WFI 1-3 by punchbowl's level2_core_flow: "
            "one per cadence slot, 9 frames when complete; incomplete groups after the wait, flagged.",
            **common,
        ),
        dg.AssetSpec(
            LEVEL2_CTM,
            deps=[*late, *masks, alphas],
            tags={"level": "2", "observatory": "M"},
            description="Level 2 clear trefoil mosaics (CTM) of WFI 1-3 by punchbowl's level2_core_flow: "
            "3 frames when complete; incomplete groups after the wait, flagged.",
            **common,
        ),
        *[
            dg.AssetSpec(
                level2_layers_key(c),
                tags={"level": "2", "observatory": c.obs},
                deps=[
                    dg.AssetDep(level1_late_key(c), partition_mapping=GROUP_INPUT_MAPPING),
                    calibration_key("mask", c),
                    alphas,
                ],
                description=f"Level 2 layers of observatory {c.obs} (XP{c.obs}, XR{c.obs}): its frames "
                "reprojected into the trefoil frame before merging, which Level 3 consumes.",
                **common,
            )
            for c in WFI_CAMERAS
        ],
    ]
    kwargs = product_asset_kwargs("M", "2")
    outputs = {
        LEVEL2_PTM: (lambda o: o["code"] == "PT", ("polarized",)),
        LEVEL2_CTM: (lambda o: o["code"] == "CT", ("clear",)),
        **{level2_layers_key(c): ((lambda o, obs=c.obs: o["obs"] == obs), ("polarized", "clear")) for c in WFI_CAMERAS},
    }

    @dg.multi_asset(
        name="level2_mosaics",
        specs=specs,
        check_specs=[
            dg.AssetCheckSpec(
                GROUPS_MADE_CHECK,
                asset=key,
                description="Warns about groups made incomplete, "
                "failed or waiting, with each missing member's state and reason.",
            )
            for key in (LEVEL2_PTM, LEVEL2_CTM)
        ],
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=6),
        retry_policy=kwargs["retry_policy"],
        partitions_def=hourly_partitions,
    )
    def level2_mosaics(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> Iterator:
        settings = pipeline.config
        outcomes = process_group_partitions(
            context,
            catalog,
            lambda session: GroupProcessor(session, archive, settings, context.run.run_id),
            LEVEL2_PTM,
            outputs,
        )
        for key, (keep, _) in outputs.items():
            yield dg.MaterializeResult(asset_key=key, data_version=content_version(outcomes, keep))
        for key, kind in ((LEVEL2_PTM, "polarized"), (LEVEL2_CTM, "clear")):
            yield groups_check(key, [o for o in outcomes if o.kind == kind])

    return level2_mosaics
