"""NFI F-corona models ``CFN`` from Level 2 ``CNN``: settings, the asset's wiring, inputs, refusals, and parity.

The parity case synthesizes reduced-size ``CNN`` (128 x 128, from punchbowl's shipped NFI Level 1
frame binned by 16, in the frame PCA gives its ``CNN``: centred, north up) and compares one ``CFN``
made through Dagster with a direct ``construct_f_corona_model`` call on the model's inputs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg
import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from punchpipe_assets.config import Level3Settings, NfiFCoronaSettings
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.level2.nfi_pca_assets import LEVEL2_CNN
from punchpipe_assets.level3.fcorona import NfiFCoronaBuilder
from punchpipe_assets.materialize import PUNCHBOWL_LARGE_MEMORY_POOL
from punchpipe_assets.products import catalog_product
from punchpipe_assets.resources import ArchiveResource
from punchpipe_assets.resources.catalog import FileRelationship, ModelRefusal, ProductFile
from punchpipe_tests.chain import materialize
from punchpipe_tests.level1.test_late import metadata
from punchpipe_tests.level3.test_fcorona import NOON, add_layer

CFN_KEY = dg.AssetKey("level3_fcorona_clear_nfi4")
SHIPPED = "level1/tests/data/PUNCH_L1_XR4_20251001120821_v0j.fits"
SIZE = 128


@pytest.fixture
def backend() -> str:
    """Run these tests on SQLite only (they need no PostgreSQL)."""
    return "sqlite"


def test_settings_fit_the_nfi_cadence_and_are_validated():
    settings = Level3Settings().fcorona_nfi
    assert (settings.spacing_hours, settings.half_window_hours) == (12, 48)
    assert (settings.min_inputs_per_half, settings.max_inputs_per_half) == (20, 90)
    with pytest.raises(ValidationError, match="divide 24"):
        NfiFCoronaSettings(spacing_hours=7)
    with pytest.raises(ValidationError, match="must not exceed"):
        NfiFCoronaSettings(min_inputs_per_half=91)


def test_the_cfn_asset_takes_the_cnn_windows_around_its_grid_time_in_the_large_memory_pool(config):
    config.level3.fcorona_nfi = NfiFCoronaSettings(half_window_hours=24)
    defs = build_definitions(config)
    asset = defs.resolve_assets_def(CFN_KEY)
    assert asset.dependency_keys == {LEVEL2_CNN}
    mapping = asset.get_partition_mapping(LEVEL2_CNN)
    assert isinstance(mapping, dg.TimeWindowPartitionMapping) and (mapping.start_offset, mapping.end_offset) == (-2, 2)
    assert asset.op.pool == PUNCHBOWL_LARGE_MEMORY_POOL
    # The model of 2025-08-02 12:00 takes the CNN batch windows of its 24 h either side.
    upstream = asset.partitions_def, defs.resolve_assets_def(LEVEL2_CNN).partitions_def
    windows = mapping.get_upstream_mapped_partitions_result_for_partitions(
        upstream[0].subset_with_partition_keys(["2025-08-02-12:00"]), upstream[0], upstream[1]
    ).partitions_subset.get_partition_keys()
    assert sorted(windows) == [f"2025-08-{d:02d}-{h:02d}:00" for d, h in ((1, 12), (2, 0), (2, 12), (3, 0), (3, 12))]


def test_a_cfn_takes_the_level2_cnn_of_its_window_and_is_refused_with_too_few(config, catalog):
    config.level3.fcorona_nfi = NfiFCoronaSettings(half_window_hours=2, min_inputs_per_half=2)
    archive = ArchiveResource(root=str(config.archive_dir))
    with catalog.session() as session:
        inside = [add_layer(session, "N", "CN", NOON + timedelta(minutes=m)) for m in (-112, -8, 0, 112)]
        add_layer(session, "N", "CN", NOON - timedelta(minutes=121))  # outside the window
        add_layer(session, "N", "CN", NOON + timedelta(hours=2))  # the window ends before it
        add_layer(session, "N", "CN", NOON + timedelta(minutes=16), outlier=True)  # PCA's outliers left out
        add_layer(session, "N", "CN", NOON + timedelta(minutes=24)).level = "3"  # a Level 3 CNN is not an input
        add_layer(session, "4", "XR", NOON + timedelta(minutes=32)).level = "1"  # nor an early NFI frame
        session.flush()
        add_layer(session, "1", "XR", NOON + timedelta(minutes=40))  # nor a WFI layer
        builder = NfiFCoronaBuilder(session, archive, config)
        assert (builder.level, builder.code, builder.obs) == ("3", "CF", "N")
        candidates = builder.candidates(NOON)
        assert [p.id for p in candidates] == [p.id for p in inside]
        chosen, refusal = builder.choose(candidates, NOON)
        assert refusal is None and [p.id for p in chosen] == [p.id for p in inside]
        # One more than exists on each side: refused with the reason, recorded, tried again by then.
        config.level3.fcorona_nfi = NfiFCoronaSettings(
            half_window_hours=2, min_inputs_per_half=3, impossible_after_hours=1e5
        )
        outcome = NfiFCoronaBuilder(session, archive, config).build(NOON, "2025-08-01-12:00")
        assert outcome.status == "refused" and outcome.deadline == NOON + timedelta(hours=2 + 1e5)
        assert outcome.reason == (
            "CFN 2025-08-01T12:00: 2 CNN before, the minimum is 3; 2 CNN after, the minimum is 3 (CNN within 2 h)"
        )
        [row] = session.scalars(select(ModelRefusal)).all()
        assert (row.level, row.product_code, row.observatory, row.reference_time) == ("3", "CF", "N", NOON)
        assert row.status == "refused" and row.reason == outcome.reason
        # Long after its window: impossible (consumers take the nearest models).
        config.level3.fcorona_nfi = NfiFCoronaSettings(half_window_hours=2, min_inputs_per_half=3)
        outcome = NfiFCoronaBuilder(session, archive, config).build(NOON, "2025-08-01-12:00")
        assert outcome.status == "impossible" and "impossible: its window ended" in outcome.reason
        assert session.scalars(select(ModelRefusal)).one().status == "impossible"


def synthetic_cnn(config, catalog, start: datetime, count: int) -> None:
    """Catalog ``count`` reduced-size Level 2 ``CNN``, one every 8 minutes from ``start``, as PCA writes them."""
    import punchbowl
    from astropy.nddata import StdDevUncertainty
    from punchbowl.data import NormalizedMetadata, load_ndcube_from_fits
    from punchbowl.data.punchcube import PUNCHCube

    shipped = load_ndcube_from_fits(f"{punchbowl.__path__[0]}/{SHIPPED}", include_provenance=False)
    factor = shipped.data.shape[0] // SIZE
    base = shipped.data.reshape(SIZE, factor, SIZE, factor).mean(axis=(1, 3))
    wcs = shipped.wcs[::factor, ::factor].deepcopy()
    wcs.wcs.pc, wcs.wcs.crpix, wcs.wcs.crval = np.eye(2), (SIZE / 2 + 0.5, SIZE / 2 + 0.5), (0, 0)
    archive, rng = ArchiveResource(root=str(config.archive_dir)), np.random.default_rng(1)
    yy, xx = np.indices(base.shape) / SIZE
    masked = np.hypot(yy - 0.5, xx - 0.5) < 0.08  # the occulter: infinite uncertainty, as PCA marks it
    with catalog.session() as session:
        for i in range(count):
            when = start + i * timedelta(minutes=8)
            meta = NormalizedMetadata.load_template("CNN", "2")
            meta["DATE-OBS"] = f"{when:%Y-%m-%dT%H:%M:%S}.000"
            meta["FILEVRSN"] = config.level0.file_version
            phase = 2 * np.pi * i / 9
            data = base * (1 + 0.1 * np.sin(phase) * xx + 0.1 * np.cos(phase) * yy) + rng.normal(0, 1e-13, base.shape)
            uncertainty = np.where(masked, np.inf, 1e-13)
            cube = PUNCHCube(
                data=data.astype(np.float32), meta=meta, wcs=wcs, uncertainty=StdDevUncertainty(uncertainty)
            )
            path = archive.product_path("2", "CN", "N", when, config.level0.file_version)
            sha256 = archive.write_cube(cube, path, skip_stats=False)
            catalog_product(
                session,
                None,
                code="CN",
                obs="N",
                date_obs=when,
                file_version=config.level0.file_version,
                path=archive.relative(path),
                sha256=sha256,
                fingerprint="synthetic",
                parents=[],
                acquisition_time=when,
                level="2",
            )
        session.commit()


def test_a_cfn_through_dagster_matches_a_direct_punchbowl_call_on_its_inputs(config, catalog, instance, tmp_path):
    from punchbowl.data import load_ndcube_from_fits
    from punchbowl.level3.f_corona_model import construct_f_corona_model

    from punchpipe_assets.fixes import f_corona_in_nfi_frame

    config.level3.fcorona_nfi = NfiFCoronaSettings(half_window_hours=2, min_inputs_per_half=3, max_inputs_per_half=6)
    synthetic_cnn(config, catalog, NOON - timedelta(hours=2) + timedelta(minutes=3), 30)  # 15 a side
    materialize(config, instance, [CFN_KEY], ["2025-08-01-12:00"])
    values = metadata(instance, CFN_KEY, "2025-08-01-12:00")
    assert values["products_made"] == 1 and len(values["input_files"]) == 12

    archive = ArchiveResource(root=str(config.archive_dir))
    with catalog.session() as session:
        model = session.scalars(select(ProductFile).where(ProductFile.level == "3")).one()
        assert (model.file_type, model.observatory, model.date_obs) == ("CF", "N", NOON)
        parents = session.scalars(
            select(ProductFile)
            .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
            .where(FileRelationship.child_id == model.id)
            .order_by(ProductFile.date_obs)
        ).all()
        # A seeded choice of 6 of the 15 on each side; the metadata names the same files.
        assert [p.date_obs < NOON for p in parents] == [True] * 6 + [False] * 6
        assert sorted(name for name, _ in values["input_files"]) == sorted(p.path.split("/")[-1] for p in parents)
        paths = [str(archive.absolute(p.path)) for p in parents]
        written = load_ndcube_from_fits(str(archive.absolute(model.path)), include_provenance=False)

    with f_corona_in_nfi_frame(paths[0]):
        [direct] = construct_f_corona_model(list(paths), reference_time="2025-08-01T12:00:00", num_workers=1)
    assert written.meta["TYPECODE"].value + written.meta["OBSCODE"].value == "CFN"
    assert written.data.shape == direct.data.shape == (SIZE, SIZE)
    finite = np.isfinite(direct.data)
    assert 0 < finite.sum() < SIZE * SIZE  # the occulter has no samples: NaN in both
    np.testing.assert_array_equal(np.isfinite(written.data), finite)
    # The direct model written as the pipeline writes (its quantized compression): the same pixels.
    direct.meta["FILEVRSN"] = config.level0.file_version
    path = tmp_path / "direct_cfn.fits"
    archive.write_cube(direct, path, skip_stats=False)
    again = load_ndcube_from_fits(str(path), include_provenance=False)
    np.testing.assert_array_equal(written.data, again.data)
    np.testing.assert_array_equal(written.uncertainty.array, again.uncertainty.array)
