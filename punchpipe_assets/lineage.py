"""Lineage queries on the catalog: what made a product, and what a file went into."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from punchpipe_assets.resources.catalog import FilePacket, FileRelationship, Packet, ProductFile, TelemetryFile


def find_product(session: Session, path_or_name: str) -> ProductFile:
    """The catalogued product with this path or base name."""
    name = Path(path_or_name).name
    product = session.scalars(
        select(ProductFile).where(or_(ProductFile.path == str(path_or_name), ProductFile.path.like(f"%/{name}")))
    ).first()
    if product is None:
        raise LookupError(f"{path_or_name} is not in the catalog")
    return product


def lineage_tree(session: Session, product: ProductFile) -> dict:
    """The tree of a product down to its telemetry files.

    Returns
    -------
    dict
        ``{"file", "path", "sha256", "parents": [...], "telemetry": [{"file", "state", "packets": {role: n}}]}``.
    """
    parents = session.scalars(
        select(ProductFile)
        .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
        .where(FileRelationship.child_id == product.id)
        .order_by(ProductFile.date_obs)
    ).all()
    roles: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    rows = session.execute(
        select(TelemetryFile.name, TelemetryFile.state, FilePacket.role)
        .join(Packet, Packet.telemetry_file_id == TelemetryFile.id)
        .join(FilePacket, FilePacket.packet_id == Packet.id)
        .where(FilePacket.file_id == product.id)
    )
    for name, state, role in rows:
        roles[(name, state)][role] += 1
    return {
        "file": Path(product.path).name,
        "path": product.path,
        "sha256": product.sha256,
        "parents": [lineage_tree(session, parent) for parent in parents],
        "telemetry": [
            {"file": name, "state": state, "packets": dict(counts)} for (name, state), counts in sorted(roles.items())
        ],
    }


def affected_products(session: Session, product: ProductFile) -> list[ProductFile]:
    """Every product made, directly or through other products, from a file (e.g. a calibration file)."""
    found: dict[int, ProductFile] = {}
    frontier = [product.id]
    while frontier:
        children = session.scalars(
            select(ProductFile)
            .join(FileRelationship, FileRelationship.child_id == ProductFile.id)
            .where(FileRelationship.parent_id.in_(frontier))
        ).all()
        frontier = [child.id for child in children if child.id not in found]
        found.update({child.id: child for child in children})
    return sorted(found.values(), key=lambda p: (p.level, p.observatory, p.date_obs))
