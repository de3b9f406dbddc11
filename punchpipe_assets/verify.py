"""``punchpipe verify``: every archive file against its catalogued checksum, and the repair of what is not.

A product made by the pipeline that is missing or damaged is remade from its inputs by an
operator's backfill of its partition (materializations remake it because "unchanged" requires the
file on disk to be the catalogued one: ``ArchiveResource.holds``); Level 0 is re-formed from the
telemetry packets. A delivered file (calibration, bootstrap models) cannot be remade: it is reported
with what was made from it, for the operator to deliver it again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from sqlalchemy import select

from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.resources import ArchiveResource, CatalogResource
from punchpipe_assets.resources.archive import checksum_on_disk
from punchpipe_assets.resources.catalog import FileRelationship, ProductFile

_LEVELQ_ASSETS = {"CQ": "levelq_cqm", "CF": "levelq_cfm", "CT": "levelq_ctm", "QA": "levelq_qam"}


@dataclass
class ArchiveProblem:
    """A catalogued file that is not on disk as catalogued."""

    path: str
    problem: str  # missing | damaged
    origin: str  # pipeline | delivered
    asset: str | None = None
    partition: str | None = None
    made_from: list[str] = field(default_factory=list)
    used_by: list[str] = field(default_factory=list)


def product_asset_key(product: ProductFile) -> dg.AssetKey | None:
    """Return the asset a pipeline-made product belongs to (None for delivered files)."""
    level, code, obs = product.level, product.file_type, product.observatory
    camera = CAMERA_BY_OBS.get(obs)
    if level == "0" and camera is not None:
        return dg.AssetKey(f"level0_{camera.slug}")
    if level == "1" and camera is not None:
        stage = {"X": "early", "S": "stray_light", "Q": "quick"}.get(code[0], "late")
        return dg.AssetKey(f"level1_{stage}_{camera.slug}")
    if level == "2":
        return dg.AssetKey("level2_ptm" if code[0] == "P" or code == "XP" else "level2_ctm")
    if level == "Q" and code in _LEVELQ_ASSETS:
        return dg.AssetKey(_LEVELQ_ASSETS[code])
    return None


def verify_archive(config: PipelineConfig) -> tuple[int, list[ArchiveProblem]]:
    """Compare every catalogued archive file with its checksum; return how many were checked and the problems."""
    archive = ArchiveResource(root=str(config.archive_dir))
    problems = []
    with CatalogResource(url=config.catalog_url).session() as session:
        products = session.scalars(select(ProductFile).order_by(ProductFile.level, ProductFile.path)).all()
        for product in products:
            on_disk = checksum_on_disk(archive.absolute(product.path))
            if on_disk == product.sha256:
                continue
            created = product.state == "created"
            key = product_asset_key(product) if created else None
            parents = session.scalars(
                select(ProductFile)
                .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
                .where(FileRelationship.child_id == product.id)
            ).all()
            children = session.scalars(
                select(ProductFile)
                .join(FileRelationship, FileRelationship.child_id == ProductFile.id)
                .where(FileRelationship.parent_id == product.id)
            ).all()
            problems.append(
                ArchiveProblem(
                    path=product.path,
                    problem="missing" if on_disk is None else "damaged",
                    origin="pipeline" if created else "delivered",
                    asset=key.to_user_string() if key else None,
                    partition=product.partition_key if key else None,
                    made_from=sorted(Path(p.path).name for p in parents),
                    used_by=sorted(Path(p.path).name for p in children),
                )
            )
    return len(products), problems


def repair_selectors(problems: list[ArchiveProblem]) -> list:
    """Return the backfill selectors (``PartitionsByAssetSelector``) that remake the repairable problems."""
    from dagster._core.definitions.selector import PartitionRangeSelector, PartitionsByAssetSelector, PartitionsSelector

    partitions: dict[str, set[str]] = defaultdict(set)
    for problem in problems:
        if problem.asset and problem.partition:
            partitions[problem.asset].add(problem.partition)
    return [
        PartitionsByAssetSelector(
            asset_key=dg.AssetKey(asset),
            partitions=PartitionsSelector(ranges=[PartitionRangeSelector(k, k) for k in sorted(keys)]),
        )
        for asset, keys in sorted(partitions.items())
    ]
