"""What the fault tests assert after a fault: nothing lost, nothing duplicated, nothing half-written."""

from __future__ import annotations

from sqlalchemy import select

from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.resources.archive import sha256_of
from punchpipe_assets.resources.catalog import CatalogResource, ProductFile


def assert_level0_made_once(config: PipelineConfig, images: int) -> list[ProductFile]:
    """Assert every one of ``images`` Level 0 images is catalogued once and on disk with its checksum.

    Also that the archive holds no uncatalogued Level 0 file and no staging folder. Returns the products.
    """
    with CatalogResource(url=config.catalog_url).session() as session:
        products = session.scalars(select(ProductFile).where(ProductFile.level == "0")).all()
    assert len(products) == images  # nothing lost
    assert len({(p.file_type, p.observatory, p.date_obs) for p in products}) == len(products)
    for product in products:
        assert sha256_of(config.archive_dir / product.path) == product.sha256, product.path
    on_disk = {p.relative_to(config.archive_dir).as_posix() for p in (config.archive_dir / "0").rglob("*.fits")}
    assert on_disk == {p.path for p in products}
    assert not list(config.archive_dir.rglob(".staging-*"))
    return products
