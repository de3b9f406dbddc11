"""What the product assets of every level share: pools, retries, metadata, checks, the partition loop."""

import hashlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import dagster as dg
from sqlalchemy.orm import Session

from punchpipe_assets.cameras import Camera
from punchpipe_assets.grid_models import ModelOutcome
from punchpipe_assets.partitions import hourly_partitions
from punchpipe_assets.products import FrameOutcome, FrameProcessor
from punchpipe_assets.quicklook import with_quicklook
from punchpipe_assets.resources import ArchiveResource, CatalogResource
from punchpipe_assets.resources.catalog import naive_utc, utcnow
from punchpipe_assets.sensors.waits import record_waits

# BackfillPolicy is beta in Dagster 1.13; the pipeline relies on it to amortize run start-up.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

#: Steps of up to about 2 GB (Level 0, early Level 1); the pool's limit is set on the instance.
PUNCHBOWL_POOL = "punchbowl"
#: Steps that hold several GB: stray-light estimation (every input frame of a window in shared
#: memory), late/quick Level 1 (two 30-bin 2048x2048 models: peaks near 6 GB), F-corona models.
PUNCHBOWL_LARGE_MEMORY_POOL = "punchbowl_large_memory"
#: Seconds before the first retry of a product asset, by level (doubled for the second retry).
RETRY_DELAY = {"0": 5, "1": 10, "2": 10, "3": 10, "Q": 10}


#: Op tag naming the Celery queue of a step (dagster-celery): one queue per concurrency pool.
CELERY_QUEUE_TAG = "dagster-celery/queue"


def pool_kwargs(pool: str) -> dict[str, Any]:
    """Return the keywords that put an asset's steps in a concurrency pool and its Celery queue.

    With the Celery executor, a step goes to the queue named like its pool, so that
    ``punchbowl_large_memory`` steps run only on workers started for them (``punchpipe worker``).
    """
    return {"pool": pool, "op_tags": {CELERY_QUEUE_TAG: pool}}


def product_asset_kwargs(obs: str, level: str) -> dict[str, Any]:
    """Return the ``dg.asset`` keywords every punchbowl product asset of a level shares.

    Parameters
    ----------
    obs
        Observatory code of the products (``1``-``4``, ``M`` for mosaics, ``N`` for NFI-only).
    level
        The product level (``"0"``, ``"1"``, ``"2"``, ``"3"``, ``"Q"``).

    Returns
    -------
    dict
        ``group_name`` (``level{level}``), ``retry_policy`` (two retries, ``RETRY_DELAY`` of the
        level, exponential back-off), ``kinds`` and ``tags`` (level and observatory).

    """
    return {
        "group_name": f"level{level.lower()}",
        "retry_policy": dg.RetryPolicy(max_retries=2, delay=RETRY_DELAY[level], backoff=dg.Backoff.EXPONENTIAL),
        "kinds": {"fits", "punchbowl"},
        "tags": {"level": level, "observatory": obs},
    }


def frames_metadata(frames: list[FrameOutcome]) -> dict[str, dg.MetadataValue]:
    """Materialization metadata of one partition: outputs, every input, frame counts."""
    count = {status: sum(f.status == status for f in frames) for status in ("made", "unchanged", "failed")}
    return {
        "frames_made": dg.MetadataValue.int(count["made"]),
        "frames_unchanged": dg.MetadataValue.int(count["unchanged"]),
        "frames_failed": dg.MetadataValue.int(count["failed"]),
        "outputs": dg.MetadataValue.json(
            [{"path": f.path, "sha256": f.sha256, "status": f.status} for f in frames if f.path]
        ),
        "input_level0_files": dg.MetadataValue.json(sorted(f.level0 for f in frames)),
        "input_calibration_files": dg.MetadataValue.json(
            sorted({(c["file"], c["version"], c["sha256"], c.get("origin", "")) for f in frames for c in f.calibration})
        ),
        "warnings": dg.MetadataValue.json([{"level0": f.level0, "warning": w} for f in frames for w in f.warnings]),
        "not_made": dg.MetadataValue.json(
            [{"level0": f.level0, "status": f.status, "reason": f.reason} for f in frames if not f.path]
        ),
    }


FRAMES_MADE_CHECK = "frames_made"


def frames_made_check_spec(key: dg.AssetKey) -> dg.AssetCheckSpec:
    """Return the check that every input frame of a run's partitions became a product."""
    return dg.AssetCheckSpec(
        FRAMES_MADE_CHECK,
        asset=key,
        description="Warns when frames of the run's partitions were not made (failed, or no calibration), "
        "with each frame's reason; the other frames and later partitions are not held back.",
    )


def frames_made_check(key: dg.AssetKey, frames: list[FrameOutcome]) -> dg.AssetCheckResult:
    """Pass when every frame was made or unchanged; warn with the frames not made and why."""
    not_made = [f for f in frames if f.status not in ("made", "unchanged")]
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=FRAMES_MADE_CHECK,
        passed=not not_made,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "frames": len(frames),
            "frames_not_made": len(not_made),
            "not_made": dg.MetadataValue.json(
                [{"frame": f.level0, "status": f.status, "reason": (f.reason or "")[:500]} for f in not_made[:50]]
            ),
        },
    )


def hourly_level1_asset_kwargs(camera: Camera, key: dg.AssetKey) -> dict:
    """``dg.asset`` keywords shared by the hourly Level 1 products of a camera (early, late, quick).

    Hourly partitions, up to six hours per backfill run (punchbowl is imported once per run), the
    ``frames_made`` check, and the keywords every product asset shares (``product_asset_kwargs``).
    """
    return {
        "partitions_def": hourly_partitions,
        "backfill_policy": dg.BackfillPolicy.multi_run(max_partitions_per_run=6),
        "check_specs": [frames_made_check_spec(key)],
        **product_asset_kwargs(camera.obs, "1"),
    }


def process_frame_partitions(
    context: dg.AssetExecutionContext,
    catalog: CatalogResource,
    camera: Camera,
    make_processor: Callable[[Session], FrameProcessor],
    metadata: Callable[[list[FrameOutcome]], dict[str, dg.MetadataValue]] = frames_metadata,
    no_calibration: str | None = None,
) -> list[FrameOutcome]:
    """Process every hourly partition of a run, log the frames not made, record each partition's metadata.

    Parameters
    ----------
    context
        The asset's execution context.
    catalog
        The catalog; one session (committed) per partition.
    camera
        The camera.
    make_processor
        The frame processor of a session.
    metadata
        The materialization metadata of one partition's frames.
    no_calibration
        When given, frames without calibration are logged as warnings with this text.

    Returns
    -------
    list[FrameOutcome]
        The frames of every partition.

    """
    outcomes: list[FrameOutcome] = []
    for partition_key in context.partition_keys:
        window = hourly_partitions.time_window_for_partition_key(partition_key)
        with catalog.session() as session:
            processor = make_processor(session)
            frames = processor.process_window(camera, naive_utc(window.start), naive_utc(window.end), partition_key)
        for frame in frames:
            for warning in frame.warnings:
                context.log.warning(f"{frame.level0}: {warning}")
            if frame.status == "failed":
                context.log.error(f"{frame.level0}: {frame.reason}")
            elif frame.status == "no_calibration" and no_calibration is not None:
                context.log.warning(f"{frame.level0}: {no_calibration}: {frame.reason}")
        context.add_asset_metadata(with_quicklook(metadata(frames), processor.archive), partition_key=partition_key)
        outcomes.extend(frames)
    return outcomes


MODELS_MADE_CHECK = "models_made"


def model_metadata(outcomes: Sequence[ModelOutcome]) -> dict[str, dg.MetadataValue]:
    """Materialization metadata of models or averages: outputs, every input, counts, reasons."""
    statuses = ("made", "unchanged", "refused", "impossible", "failed", "waiting")
    count = {s: sum(o.status == s for o in outcomes) for s in statuses}
    return {
        **{f"products_{status}": dg.MetadataValue.int(n) for status, n in count.items()},
        "products_flagged": dg.MetadataValue.int(sum(bool(o.flags) for o in outcomes if o.path)),
        "outputs": dg.MetadataValue.json([o.describe() for o in outcomes if o.path]),
        "input_files": dg.MetadataValue.json(sorted({(i["file"], i["sha256"]) for o in outcomes for i in o.inputs})),
        "not_made": dg.MetadataValue.json(
            [
                {"time": f"{o.reference_time:%Y-%m-%dT%H:%M:%S}", "status": o.status, "reason": (o.reason or "")[:500]}
                for o in outcomes
                if not o.path
            ]
        ),
    }


def model_version(outcomes: Sequence[ModelOutcome]) -> dg.DataVersion:
    """Compute a data version from the products' content alone."""
    digests = sorted(f"{o.path}:{o.sha256}" for o in outcomes if o.path)
    return dg.DataVersion(hashlib.sha256("|".join(digests).encode()).hexdigest()[:24])


def models_check(key: dg.AssetKey, outcomes: Sequence[ModelOutcome]) -> dg.AssetCheckResult:
    """Warn about models or averages refused, impossible, failed, waiting or made incomplete, with the reasons."""
    problems = [o for o in outcomes if o.status in ("refused", "impossible", "failed", "waiting") or o.flags]
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=MODELS_MADE_CHECK,
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "problems": dg.MetadataValue.json(
                [
                    {
                        "time": f"{o.reference_time:%Y-%m-%dT%H:%M:%S}",
                        "status": o.status,
                        "flags": o.flags,
                        "reason": (o.reason or "")[:300],
                    }
                    for o in problems[:50]
                ]
            )
        },
    )


def models_made_spec(key: dg.AssetKey) -> dg.AssetCheckSpec:
    """Return the check spec of a model or average asset."""
    return dg.AssetCheckSpec(
        MODELS_MADE_CHECK,
        asset=key,
        description="Warns about products refused (too few "
        "inputs), failed, waiting for inputs or made from an incomplete bin, with the reasons.",
    )


def materialize_grid_models(
    context: dg.AssetExecutionContext,
    catalog: CatalogResource,
    grid: dg.TimeWindowPartitionsDefinition,
    key: dg.AssetKey,
    build: Callable[[Session, Any, str], ModelOutcome],
    archive: ArchiveResource,
) -> Iterator:
    """Build the model of every grid partition of a run; log refusals and failures, record metadata.

    ``build(session, reference_time, partition_key)`` makes (or refuses) one model (written in
    ``archive``, which also gives the metadata its quicklook). A refused model with a ``deadline``
    (when it would be given up) is kept for the waits sensor. Yields the
    result (data version from the models' content) and the ``models_made`` check.
    """
    outcomes = []
    for partition_key in context.partition_keys:
        reference_time = naive_utc(grid.time_window_for_partition_key(partition_key).start)
        with catalog.session() as session:
            outcome = build(session, reference_time, partition_key)
            waits = [(outcome.deadline, outcome.reason)] if outcome.status == "refused" and outcome.deadline else []
            record_waits(session, key, partition_key, waits)
        if outcome.status in ("refused", "impossible", "failed"):
            (context.log.error if outcome.status == "failed" else context.log.warning)(outcome.reason)
        context.add_asset_metadata(with_quicklook(model_metadata([outcome]), archive), partition_key=partition_key)
        outcomes.append(outcome)
    yield dg.MaterializeResult(data_version=model_version(outcomes))
    yield models_check(key, outcomes)


def materialize_windows(
    context: dg.AssetExecutionContext,
    catalog: CatalogResource,
    archive: ArchiveResource,
    key: dg.AssetKey,
    process: Callable[[Session, datetime, datetime, str, datetime], list[ModelOutcome]],
    metadata: Callable[[list[ModelOutcome]], dict[str, dg.MetadataValue]] = model_metadata,
    keep_waits: bool = False,
) -> Iterator:
    """Make the products of every partition window of a run: log failures, record metadata and waits.

    ``process(session, start, end, partition_key, now)`` makes the window's products (mosaics, bins)
    and returns their outcomes. With ``keep_waits``, the deadlines of waiting outcomes (incomplete
    bins) are kept for the waits sensor, which requests the partition again when one passes.
    Yields the result (data version from the products' content) and the ``models_made`` check.
    """
    outcomes = []
    for partition_key in context.partition_keys:
        window = context.assets_def.partitions_def.time_window_for_partition_key(partition_key)
        now = utcnow()
        with catalog.session() as session:
            made = process(session, naive_utc(window.start), naive_utc(window.end), partition_key, now)
            if keep_waits:
                waits = [(o.deadline, o.reason) for o in made if o.status == "waiting" and o.deadline > now]
                record_waits(session, key, partition_key, waits)
        for outcome in made:
            if outcome.status == "failed":
                context.log.error(outcome.reason)
            elif outcome.status == "waiting":
                context.log.info(outcome.reason)
        context.add_asset_metadata(with_quicklook(metadata(made), archive), partition_key=partition_key)
        outcomes.extend(made)
    yield dg.MaterializeResult(data_version=model_version(outcomes))
    yield models_check(key, outcomes)
