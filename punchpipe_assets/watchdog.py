"""What operators watch: freshness of the near-real-time products and the product-count watchdog.

- **Freshness.** Level 0 and QuickPUNCH (``levelq_cqm``, ``levelq_ctm``) carry Dagster's
  ``FreshnessPolicy.time_window`` from ``freshness:`` (the UI's asset health shows them stale).
- **Watchdog.** The partitioned asset check ``product_count`` on Level 0, early Level 1 and
  Level Q ``CTM`` compares, for each hour, the products catalogued with the mission cadence of
  ``watchdog:`` (WARN, with the counts and the codes short). It has no automation condition, so it
  rides along with every run of its asset (the landing sensor's, Declarative Automation's,
  backfills). Dagster records a check's result for a partition only in a single-partition run; in
  a partition-range run the check logs each hour's ``AssetCheckEvaluation`` (with its partition) in
  its own step, as Dagster logs check results, and returns a summary of the range. (Runless
  evaluations, ``report_runless_asset_event``, cannot be used: Dagster 1.13 stores them all under one
  run id, and a second evaluation of the same partition violates the unique index of
  ``asset_check_executions``.)
"""

import warnings
from collections.abc import Mapping, Sequence
from datetime import timedelta

import dagster as dg
from dagster._core.events import DagsterEvent
from sqlalchemy import func, select

from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.config_ops import FreshnessSettings, WatchdogSettings
from punchpipe_assets.level0.assets import level0_key
from punchpipe_assets.level1.assets import level1_early_key
from punchpipe_assets.levelq.assets import LEVELQ_CQM, LEVELQ_CTM
from punchpipe_assets.materialize import CELERY_QUEUE_TAG, PUNCHBOWL_POOL
from punchpipe_assets.partitions import hourly_partitions
from punchpipe_assets.resources import CatalogResource
from punchpipe_assets.resources.catalog import ProductFile, naive_utc

PRODUCT_COUNT_CHECK = "product_count"
#: QuickPUNCH products made every hour (CFM and QAM are made on coarser grids).
HOURLY_LEVELQ = (LEVELQ_CQM, LEVELQ_CTM)


def freshness_policies(settings: FreshnessSettings) -> dict[dg.AssetKey, dg.FreshnessPolicy]:
    """Return the freshness policy of each near-real-time asset (none when ``freshness.enabled`` is off)."""
    if not settings.enabled:
        return {}
    level0 = dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=settings.level0_fail_minutes),
        warn_window=timedelta(minutes=settings.level0_warn_minutes),
    )
    levelq = dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=settings.levelq_fail_minutes),
        warn_window=timedelta(minutes=settings.levelq_warn_minutes),
    )
    return {**{level0_key(camera): level0 for camera in CAMERAS}, **dict.fromkeys(HOURLY_LEVELQ, levelq)}


def with_freshness(defs: dg.Definitions, settings: FreshnessSettings) -> dg.Definitions:
    """Return the definitions with the freshness policies of ``freshness_policies`` on their assets."""
    policies = freshness_policies(settings)
    if not policies:
        return defs
    with warnings.catch_warnings():  # map_asset_specs is a preview in Dagster 1.13
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return defs.map_asset_specs(
            func=lambda spec: (
                spec.replace_attributes(freshness_policy=policies[spec.key]) if spec.key in policies else spec
            )
        )


def count_products(session, level: str, obs: str, codes: Sequence[str], partition_key: str) -> dict[str, int]:
    """Count the catalogued products of a level, observatory and codes acquired in an hourly partition."""
    window = hourly_partitions.time_window_for_partition_key(partition_key)
    rows = session.execute(
        select(ProductFile.file_type, func.count())
        .where(
            ProductFile.level == level,
            ProductFile.observatory == obs,
            ProductFile.file_type.in_(list(codes)),
            ProductFile.state == "created",
            ProductFile.acquisition_time >= naive_utc(window.start),
            ProductFile.acquisition_time < naive_utc(window.end),
        )
        .group_by(ProductFile.file_type)
    ).all()
    found = dict(rows)
    return {code: int(found.get(code, 0)) for code in codes}


def evaluate_counts(counts: Mapping[str, int], cadence: Mapping[str, int], min_fraction: float) -> dict:
    """Compare an hour's counts with the cadence: the codes short, with how many are missing."""
    short = {
        code: expected - counts.get(code, 0)
        for code, expected in cadence.items()
        if counts.get(code, 0) < expected * min_fraction
    }
    return {
        "passed": not short,
        "metadata": {
            "products": dg.MetadataValue.int(sum(counts.values())),
            "expected": dg.MetadataValue.int(sum(cadence.values())),
            "counts": dg.MetadataValue.json(dict(counts)),
            "cadence": dg.MetadataValue.json(dict(cadence)),
            "missing_kinds": dg.MetadataValue.json(sorted(short)),
            "missing": dg.MetadataValue.json(short),
        },
    }


def build_product_count_check(
    key: dg.AssetKey, level: str, obs: str, cadence: Mapping[str, int], min_fraction: float
) -> dg.AssetChecksDefinition:
    """Build the ``product_count`` check of one asset: each hour's products against the cadence.

    Parameters
    ----------
    key
        The checked asset (hourly partitions).
    level, obs
        Level and observatory of its catalogued products.
    cadence
        Products of each code expected in an hour.
    min_fraction
        Fewest products of a code, as a fraction of the cadence, before the hour is flagged.

    """
    codes = tuple(cadence)

    @dg.asset_check(
        asset=key,
        name=PRODUCT_COUNT_CHECK,
        partitions_def=hourly_partitions,
        # With the Celery executor, a step goes to the queue its tag names; a cheap catalog query: any worker.
        op_tags={CELERY_QUEUE_TAG: PUNCHBOWL_POOL},
        description=f"The watchdog: products of each code made in the hour against the mission cadence "
        f"({', '.join(f'{n} {c}' for c, n in cadence.items())}); warns with the counts and the codes short.",
    )
    def product_count(context: dg.AssetCheckExecutionContext, catalog: CatalogResource) -> dg.AssetCheckResult:
        partition_keys = context.op_execution_context.partition_keys
        with catalog.session() as session:
            hours = {pk: count_products(session, level, obs, codes, pk) for pk in partition_keys}
        evaluations = {pk: evaluate_counts(counts, cadence, min_fraction) for pk, counts in hours.items()}
        if not context.op_execution_context.has_partition_key_range:
            (only,) = evaluations.values()
            return dg.AssetCheckResult(
                passed=only["passed"], severity=dg.AssetCheckSeverity.WARN, metadata=only["metadata"]
            )
        step_context = context.op_execution_context.get_step_execution_context()
        for partition_key, evaluation in evaluations.items():
            # Logged in this run's step, as Dagster logs a check result (DagsterEvent.from_step stores it).
            DagsterEvent.asset_check_evaluation(
                step_context,
                dg.AssetCheckEvaluation(
                    asset_key=key,
                    check_name=PRODUCT_COUNT_CHECK,
                    passed=evaluation["passed"],
                    severity=dg.AssetCheckSeverity.WARN,
                    partition=partition_key,
                    metadata=evaluation["metadata"],
                ),
            )
        short = {pk: e["metadata"]["missing"].value for pk, e in evaluations.items() if not e["passed"]}
        return dg.AssetCheckResult(
            passed=not short,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"hours": len(evaluations), "short_hours": dg.MetadataValue.json(short)},
        )

    return product_count


def product_count_checks(config: PipelineConfig) -> list[dg.AssetChecksDefinition]:
    """Return the watchdog's checks: Level 0 and early Level 1 of each camera, Level Q CTM."""
    settings: WatchdogSettings = config.watchdog
    fraction = settings.min_fraction
    return [
        *[build_product_count_check(level0_key(c), "0", c.obs, settings.level0_per_hour, fraction) for c in CAMERAS],
        *[
            build_product_count_check(level1_early_key(c), "1", c.obs, settings.level1_early_per_hour, fraction)
            for c in CAMERAS
        ],
        build_product_count_check(LEVELQ_CTM, "Q", "M", settings.levelq_ctm_per_hour, fraction),
    ]
