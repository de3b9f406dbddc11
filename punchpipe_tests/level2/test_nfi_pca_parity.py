"""NFI PCA through Dagster against a direct ``level2_pca_core_flow`` call on the same frames (reduced size).

punchbowl's PCA needs at least 160 frames whatever their size (100 components on 5/8 of them) and
more once it drops outliers, so the reduced case is 180 frames of 128 x 128 made from punchbowl's
shipped NFI Level 1 frame (its header and WCS, binned by 16), one every 8 minutes; without the NFI
mask (punchbowl reads only 2048 x 2048 masks). Two calls of about a minute each: science tier.
"""

from datetime import datetime, timedelta

import numpy as np
import pytest
from astropy.nddata import StdDevUncertainty
from sqlalchemy import select

from punchpipe_assets.level2.nfi_pca import NFI_CLEAR_CADENCE, NfiPcaSettings
from punchpipe_assets.level2.nfi_pca_assets import LEVEL2_CNN, PCA_BACKGROUND, PCA_COMPONENTS, run_pca
from punchpipe_assets.products import catalog_product
from punchpipe_assets.resources import ArchiveResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFile
from punchpipe_tests.chain import materialize

SHIPPED = "level1/tests/data/PUNCH_L1_XR4_20251001120821_v0j.fits"
SIZE, CONTEXT = 128, 45
WINDOW = datetime(2025, 8, 2, 0, 0)
PARTITION = "2025-08-02-00:00"


@pytest.fixture
def backend() -> str:
    """SQLite only: the catalog backend is not what this test is about."""
    return "sqlite"


def write_frames(config, catalog) -> list[ProductFile]:
    """Catalog 180 early clear NFI frames: 90 in the window, 45 a side."""
    import punchbowl
    from punchbowl.data import load_ndcube_from_fits
    from punchbowl.data.punchcube import PUNCHCube

    shipped = load_ndcube_from_fits(f"{punchbowl.__path__[0]}/{SHIPPED}", include_provenance=False)
    factor = shipped.data.shape[0] // SIZE
    base = shipped.data.reshape(SIZE, factor, SIZE, factor).mean(axis=(1, 3))
    archive, rng = ArchiveResource(root=str(config.archive_dir)), np.random.default_rng(0)
    yy, xx = np.indices(base.shape) / SIZE
    start = WINDOW - CONTEXT * NFI_CLEAR_CADENCE + timedelta(minutes=3, seconds=32)
    rows = []
    with catalog.session() as session:
        for i in range(90 + 2 * CONTEXT):
            when = start + i * NFI_CLEAR_CADENCE
            meta = shipped.meta
            meta["DATE-OBS"] = f"{when:%Y-%m-%dT%H:%M:%S}.000"
            meta["FILEVRSN"] = config.level0.file_version
            phase = 2 * np.pi * i / 12
            data = base * (1 + 0.05 * np.sin(phase) * xx + 0.05 * np.cos(phase) * yy)
            data = (data + rng.normal(0, 1e-14, base.shape)).astype(np.float32)
            cube = PUNCHCube(
                data=data, meta=meta, wcs=shipped.wcs[::factor, ::factor], uncertainty=StdDevUncertainty(data * 0)
            )
            path = archive.product_path("1", "XR", "4", when, config.level0.file_version)
            sha256 = archive.write_cube(cube, path, skip_stats=False)
            rows.append(
                catalog_product(
                    session,
                    None,
                    code="XR",
                    obs="4",
                    date_obs=when,
                    file_version=config.level0.file_version,
                    path=archive.relative(path),
                    sha256=sha256,
                    fingerprint="synthetic",
                    parents=[],
                    acquisition_time=when,
                )
            )
        session.commit()
        return [(r.id, archive.absolute(r.path)) for r in rows]


@pytest.mark.science
def test_nfi_pca_batch_matches_a_direct_punchbowl_call(config, catalog, instance):
    config.level2.nfi_pca = NfiPcaSettings(context_before=CONTEXT, context_after=CONTEXT, min_frames=180)
    frames = write_frames(config, catalog)
    result = materialize(config, instance, [LEVEL2_CNN, PCA_COMPONENTS, PCA_BACKGROUND], [PARTITION])
    [check] = result.get_asset_check_evaluations()
    assert check.passed, check.metadata

    archive = ArchiveResource(root=str(config.archive_dir))
    with catalog.session() as session:
        made = {
            (r.file_type, r.date_obs): r
            for r in session.scalars(select(ProductFile).where(ProductFile.file_type.in_(("CN", "AR", "SR"))))
        }
        assert sorted({code for code, _ in made}) == ["AR", "CN", "SR"] and len(made) == 92
        parents = {
            r.id: {
                rel.parent_id
                for rel in session.scalars(select(FileRelationship).where(FileRelationship.child_id == r.id))
            }
            for r in made.values()
        }
        ids = [i for i, _ in frames]
        context_ids = set(ids[:CONTEXT] + ids[-CONTEXT:])
        for (code, when), row in made.items():
            if code == "CN":
                assert parents[row.id] - context_ids == {
                    ids[CONTEXT + sorted(t for c, t in made if c == "CN").index(when)]
                }
            else:
                assert parents[row.id] == set(ids)
        outputs = {k: archive.absolute(r.path) for k, r in made.items()}

    paths = [str(p) for _, p in frames]
    dates = [datetime.strptime(p.split("_")[-2], "%Y%m%d%H%M%S") for p in paths[CONTEXT:-CONTEXT]]
    ref_date = datetime.fromtimestamp(sum(d.timestamp() for d in dates) / len(dates)).replace(microsecond=0)
    direct = run_pca(paths[CONTEXT:-CONTEXT], paths[:CONTEXT] + paths[-CONTEXT:], None, ref_date, config.level2.nfi_pca)
    from punchbowl.data import load_ndcube_from_fits

    assert [c.meta["TYPECODE"].value for c in direct[:2]] == ["AR", "SR"] and len(direct) == 92
    for cube in direct:
        code = cube.meta["TYPECODE"].value
        when = ref_date if code != "CN" else datetime.strptime(cube.meta.provenance[0].split("_")[-2], "%Y%m%d%H%M%S")
        written = load_ndcube_from_fits(str(outputs[(code, when)]), include_provenance=False)
        scale = np.nanmax(np.abs(cube.data)) or 1
        assert np.nanmax(np.abs(written.data - cube.data)) <= 1e-3 * scale, (code, when)
