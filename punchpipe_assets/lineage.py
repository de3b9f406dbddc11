"""Lineage queries on the catalog: what made a product, and what a file went into."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from punchpipe_assets.resources.catalog import FilePacket, FileRelationship, Packet, ProductFile, TelemetryFile


def find_product(session: Session, path_or_name: str) -> ProductFile:
    """Find the catalogued product with this (archive-relative) path or base name."""
    name = Path(path_or_name).name
    product = session.scalars(
        select(ProductFile).where(
            or_(ProductFile.path == str(path_or_name), ProductFile.path == name, ProductFile.path.like(f"%/{name}"))
        )
    ).first()
    if product is None:
        raise LookupError(f"{path_or_name} is not in the catalog")
    return product


def lineage_tree(session: Session, product: ProductFile) -> dict:
    """Return the tree of a product down to its telemetry files.

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


def partitions_reselecting(session: Session, delivered: ProductFile) -> dict[str, list[str]]:
    """Early Level 1 partitions whose calibration selection changed with a delivered file.

    For every early Level 1 (``X?``) product of the delivered file's camera that the file's code
    calibrates, the selection rule is run again; a product whose recorded calibration files of that
    code differ from the new selection needs remaking. Its partition is then out of date.

    Parameters
    ----------
    session
        Catalog session.
    delivered
        The catalogued calibration file just installed (or superseded).

    Returns
    -------
    dict[str, list[str]]
        Partition key to the names of the products to remake in it.

    """
    from punchpipe_assets.calibration.kinds import calibration_codes_for, kind_for_code
    from punchpipe_assets.calibration.select import installed_calibration, select_frame_calibration

    kind = kind_for_code(delivered.file_type)
    query = (
        select(ProductFile, FileRelationship.parent_id)
        .join(FileRelationship, FileRelationship.child_id == ProductFile.id)
        .where(ProductFile.level == "1", ProductFile.observatory == delivered.observatory)
        .where(ProductFile.file_type.like("X%"))
    )
    if not kind.is_bracketing(delivered.observatory):
        # A single-file kind is never used before its date: earlier products keep their selection.
        query = query.where(ProductFile.date_obs >= delivered.date_obs)
    parents_by_product: dict[int, set[int]] = defaultdict(set)
    products: dict[int, ProductFile] = {}
    for product, parent_id in session.execute(query):
        products[product.id] = product
        parents_by_product[product.id].add(parent_id)
    if not products:
        return {}
    parents = {
        p.id: p
        for p in session.scalars(
            select(ProductFile).where(ProductFile.id.in_({i for ids in parents_by_product.values() for i in ids}))
        )
    }
    available = installed_calibration(session, delivered.observatory)
    affected: dict[str, list[str]] = defaultdict(list)
    for product_id, product in products.items():
        inputs = [parents[i] for i in parents_by_product[product_id]]
        level0 = next((p for p in inputs if p.level == "0"), None)
        if (
            level0 is None
            or delivered.file_type not in calibration_codes_for(level0.file_type, level0.observatory).values()
        ):
            continue
        _, selected = select_frame_calibration(session, level0, available)
        recorded = {p.id for p in inputs if p.file_type == delivered.file_type}
        if {p.id for p in selected if p.file_type == delivered.file_type} != recorded:
            affected[product.partition_key or ""].append(Path(product.path).name)
    return {key: sorted(names) for key, names in sorted(affected.items()) if key}
