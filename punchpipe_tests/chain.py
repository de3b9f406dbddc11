"""Shared setup of the tests beyond Level 1: simulated WFI telemetry carried through Level 1 by real Dagster runs."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
from sqlalchemy import select

from punchpipe_assets.calibration.bootstrap import synthesize_delivery
from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.resources import ArchiveResource, CatalogResource
from punchpipe_assets.resources.catalog import ProductFile
from punchpipe_assets.sensors.calibration import scan_calibration_landing
from punchpipe_assets.simulate import simulate

SIZE = 128
WFI = tuple(camera for camera in CAMERAS if camera.instrument == "WFI")
LEVEL1_STAGES = ("level0", "level1_early", "level1_late", "level1_quick")


def small_mosaic_config(config):
    """Return the test configuration with frames of ``SIZE`` pixels and punchbowl's reduced trefoil (512x512)."""
    config.calibration_image_size = SIZE
    config.level2.trefoil_downsample = 8
    return config


def deliver_set(config, date: datetime, cameras: Sequence = WFI, size: int = SIZE) -> None:
    """Deliver a calibration set and bootstrap models through the calibration sensor's logic."""
    staging = Path(config.home) / f"delivery-{date:%Y%m%d%H%M%S}"
    for path in synthesize_delivery(staging, date, size, config.level2.trefoil_downsample, cameras=cameras):
        shutil.move(path, Path(config.calibration_landing_dir) / path.name)
    results = scan_calibration_landing(
        CatalogResource(url=config.catalog_url), ArchiveResource(root=str(config.archive_dir)), config
    )
    assert all(r.state in ("active", "superseded") for r in results), [(r.name, r.reason) for r in results]


def materialize(config, instance, keys: Sequence[dg.AssetKey], partitions: Sequence[str]) -> dg.ExecuteInProcessResult:
    """Materialize assets for partitions (a partition-range run when several), as a backfill run would."""
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    tags = {}
    if len(partitions) > 1:
        tags = {
            "dagster/asset_partition_range_start": partitions[0],
            "dagster/asset_partition_range_end": partitions[-1],
        }
    result = job.execute_in_process(
        instance=instance,
        asset_selection=list(keys),
        partition_key=partitions[0] if len(partitions) == 1 else None,
        tags=tags,
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def stage_keys(stage: str, cameras: Sequence = WFI) -> list[dg.AssetKey]:
    """Return the asset keys of one stage for the cameras, e.g. ``level1_late_wfi1``."""
    return [dg.AssetKey(f"{stage}_{camera.slug}") for camera in cameras]


def hours(start: datetime, count: int) -> list[str]:
    """Hourly partition keys from ``start``."""
    return [f"{start + timedelta(hours=i):%Y-%m-%d-%H:%M}" for i in range(count)]


def run_chain_to_level1(
    config,
    instance,
    start: datetime,
    duration_hours: float,
    cameras: Sequence = WFI,
    seed: int = 0,
    size: int = SIZE,
    stages: Sequence[str] = LEVEL1_STAGES,
    partitions: Sequence[str] | None = None,
    **faults,
) -> None:
    """Simulate telemetry, deliver calibration and bootstrap models, make Level 0 to late and quick Level 1.

    ``partitions``: the hours to make (default: the hours from ``start``, which then must be a whole hour).
    """
    report = simulate(
        start, duration_hours, Path(config.home) / "downlinks", size=size, seed=seed, cameras=cameras, **faults
    )
    for path in report.files:
        shutil.copy(path, Path(config.landing_dir) / path.name)
    from punchpipe_assets.sensors.landing import scan_landing

    scan_landing(CatalogResource(url=config.catalog_url), config, max_files=10**6)
    deliver_set(config, start - timedelta(days=1), cameras, size)
    partitions = partitions or hours(start, max(1, int(-(-duration_hours // 1))))
    for stage in stages:
        materialize(config, instance, stage_keys(stage, cameras), partitions)


def products(config, level: str, codes: Sequence[str]) -> list[ProductFile]:
    """Catalogued products of a level and codes, by DATE-OBS."""
    with CatalogResource(url=config.catalog_url).session() as session:
        return list(
            session.scalars(
                select(ProductFile)
                .where(ProductFile.level == level, ProductFile.file_type.in_(codes), ProductFile.state == "created")
                .order_by(ProductFile.date_obs, ProductFile.observatory)
            )
        )


def forget(config, where) -> list[str]:
    """Delete products matching a filter from the archive and the catalog (lineage and failures too).

    ``where`` is a SQLAlchemy condition on ``ProductFile``; returns the names deleted.
    """
    from sqlalchemy import delete, or_

    from punchpipe_assets.resources.catalog import FileRelationship, ProductFailure

    names = []
    with CatalogResource(url=config.catalog_url).session() as session:
        rows = list(session.scalars(select(ProductFile).where(where)))
        ids = [row.id for row in rows]
        session.execute(
            delete(FileRelationship).where(or_(FileRelationship.child_id.in_(ids), FileRelationship.parent_id.in_(ids)))
        )
        session.execute(delete(ProductFailure).where(ProductFailure.input_id.in_(ids)))
        for row in rows:
            (Path(config.archive_dir) / row.path).unlink(missing_ok=True)
            names.append(Path(row.path).name)
            session.delete(row)
    return names


def stale_status(config, instance, key: dg.AssetKey, partitions: Sequence[str]) -> dict[str, str]:
    """Dagster's staleness of asset partitions (``FRESH``, ``STALE``, ``MISSING``), as the UI reads it."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    graph = build_definitions(config).resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    return {partition: resolver.get_status(key, partition).value for partition in partitions}


def mtimes(config, items: Sequence[ProductFile]) -> dict[str, int]:
    """File modification times of catalogued products, by file name (what a re-run rewrote)."""
    return {Path(p.path).name: (Path(config.archive_dir) / p.path).stat().st_mtime_ns for p in items}


def assert_new_model_stales_exactly(
    config, instance, consumer: dg.AssetKey, other: dg.AssetKey, hours: Sequence[str], codes: Sequence[str], used
) -> None:
    """Assert a new model of hour ``hours[2]`` makes ``consumer`` stale there and in ``hours[1]``, not ``other``.

    Then re-materializing those hours rewrites exactly the products ``used`` (made with the old model)
    among the Level 3 products of ``codes``, and every hour is FRESH again.
    """
    assert stale_status(config, instance, consumer, hours) == {
        hours[0]: "FRESH",
        hours[1]: "STALE",
        hours[2]: "STALE",
    }
    assert stale_status(config, instance, other, hours) == dict.fromkeys(hours, "FRESH")
    before = mtimes(config, products(config, "3", codes))
    materialize(config, instance, [consumer], hours[1:])
    after = mtimes(config, products(config, "3", codes))
    assert {name for name, mtime in after.items() if before[name] != mtime} == {Path(p.path).name for p in used}
    assert stale_status(config, instance, consumer, hours) == dict.fromkeys(hours, "FRESH")
