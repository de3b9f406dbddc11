"""Finding products for scientists, and resetting an installation.

``find_products`` reads the catalog (the index of what exists); ``reset_targets`` and
``reset_installation`` clear an installation's records: Dagster's storage (runs, event log,
ticks) through the instance's own ``wipe`` and the catalog's tables, and optionally the archive.
Telemetry and calibration deliveries waiting in their landing folders are never touched.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg
from sqlalchemy import select

from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.guard import exclusive_writer, refuse_beside_daemon
from punchpipe_assets.resources.catalog import Base, CatalogResource, ProductFile


def find_products(
    config: PipelineConfig,
    level: str | None = None,
    code: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[dict]:
    """Return the products that exist (state ``created``), oldest first.

    Parameters
    ----------
    config
        The installation.
    level, code
        Product level (``0``-``3``, ``Q``) and code: a type code (``CT``) or type code and
        observatory (``CTM``, ``PM1``).
    start, end
        Observation times (DATE-OBS, UTC), ``start`` included, ``end`` excluded.

    Returns
    -------
    list[dict]
        ``path`` (absolute) and ``relative_path`` (to the archive root), ``level``, ``code``,
        ``date_obs``, ``file_version``, ``sha256``, ``partition``, ``flags``.

    """
    query = select(ProductFile).where(ProductFile.state == "created")
    if level is not None:
        query = query.where(ProductFile.level == level.upper())
    if code is not None:
        query = query.where(ProductFile.file_type == code[:2].upper())
        if len(code) > 2:
            query = query.where(ProductFile.observatory == code[2:].upper())
    if start is not None:
        query = query.where(ProductFile.date_obs >= start)
    if end is not None:
        query = query.where(ProductFile.date_obs < end)
    archive = Path(config.archive_dir)
    with CatalogResource(url=config.catalog_url).session() as session:
        rows = session.scalars(query.order_by(ProductFile.date_obs, ProductFile.level, ProductFile.file_type)).all()
        return [
            {
                "path": str(archive / row.path),
                "relative_path": row.path,
                "level": row.level,
                "code": f"{row.file_type}{row.observatory}",
                "date_obs": row.date_obs.isoformat(),
                "file_version": row.file_version,
                "sha256": row.sha256,
                "partition": row.partition_key,
                "flags": row.flags,
            }
            for row in rows
        ]


@dataclass(frozen=True)
class ResetTargets:
    """What a reset deletes, in words, and whether it is a production installation."""

    items: list[str]
    production_reasons: list[str]


def reset_targets(config: PipelineConfig, instance: dg.DagsterInstance, archive: bool) -> ResetTargets:
    """Name what ``reset_installation`` would delete and why the installation looks like production."""
    storage = type(instance.run_storage).__name__
    items = [
        f"Dagster's records on {storage} (runs, event log with every materialization, sensor and automation ticks)",
        f"the catalog at {_safe_url(config.catalog_url)} (every table: telemetry, packets, products, lineage, "
        "calibration deliveries, waits)",
    ]
    if archive:
        items.append(f"every file under the archive {config.archive_dir} (products and installed calibration)")
    production = []
    if not config.catalog_url.startswith("sqlite"):
        production.append(f"the catalog is not SQLite ({_safe_url(config.catalog_url)})")
    if "sqlite" not in storage.lower():
        production.append(f"Dagster's storage is {storage}")
    return ResetTargets(items, production)


def reset_installation(config: PipelineConfig, instance: dg.DagsterInstance, archive: bool) -> None:
    """Delete what ``reset_targets`` names, holding the writer lock, with no daemon running.

    Raises ``guard.PipelineBusy`` when another writer or a daemon works on the installation.
    """
    with exclusive_writer(config, "reset"):
        refuse_beside_daemon(instance, "reset")
        instance.wipe()
        if instance.schedule_storage is not None:
            instance.schedule_storage.wipe()
        engine = CatalogResource(url=config.catalog_url).engine
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        if archive and Path(config.archive_dir).exists():
            for child in Path(config.archive_dir).iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def _safe_url(url: str) -> str:
    """Return a database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
