"""Level 3 after PIM/CIM through Dagster: starfield models, PTM/CTM, PAM/CAM and VAM, lineage to telemetry, parity."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from punchpipe_assets.fixes import starfield_subtraction_on_sky
from punchpipe_assets.level3.assets import LEVEL3_CIM, LEVEL3_PIM
from punchpipe_assets.level3.average_assets import LEVEL3_CAM, LEVEL3_PAM, LEVEL3_VAM
from punchpipe_assets.level3.starfield_assets import LEVEL3_CTM, LEVEL3_PTM, starfield_key
from punchpipe_assets.lineage import affected_products, find_product, lineage_tree
from punchpipe_assets.resources import ArchiveResource, CatalogResource
from punchpipe_assets.resources.catalog import ModelRefusal
from punchpipe_tests.chain import (
    assert_new_model_stales_exactly,
    materialize,
    products,
    small_mosaic_config,
    stale_status,
)
from punchpipe_tests.level2.test_mosaics import header_and_data, metadata, parents
from punchpipe_tests.level3.test_level3_chain import FCORONA_KEYS, GRID, HOURS, run_chain_to_level2

STARFIELD_KEYS = [starfield_key(p) for p in ("polarized", "clear")]
DAY = "2025-08-01"
VELOCITY_BINS = ["2025-08-01-06:00", "2025-08-01-12:00"]
NOON, ONE = datetime(2025, 8, 1, 12), datetime(2025, 8, 1, 13)
#: Starfield model code, by PIM/CIM code.
STARFIELD_CODES = {"PI": "PS", "CI": "CS"}


@pytest.fixture
def backend() -> str:
    """Run the chain on SQLite only."""
    return "sqlite"


@pytest.fixture
def products_config(config):
    """Models every hour an hour either side, reduced sky maps, short velocity correlation."""
    config = small_mosaic_config(config)
    config.level3.fcorona.spacing_hours = 1
    config.level3.fcorona.half_window_hours = 1
    config.level3.fcorona.min_inputs_per_half = 1
    config.level3.fcorona.num_workers = 1
    config.level3.starfield.spacing_hours = 1
    config.level3.starfield.half_window_hours = 1
    config.level3.starfield.min_inputs_per_half = 1
    config.level3.starfield.map_scale = 0.16
    config.level3.starfield.num_workers = 1
    config.level3.fcorona.impossible_after_hours = 24 * 365 * 10  # the data are from 2025: refused, not given up
    config.level3.starfield.impossible_after_hours = 24 * 365 * 10  # the data are from 2025: refused, not given up
    config.level3.velocity.min_inputs = 2
    config.level3.velocity.delta_t = 1
    config.level3.velocity.sparsity = 1
    config.level3.velocity.n_ofs = 11
    return config


def assert_equals_direct(config, product, cube, tmp_path: Path) -> None:
    """Assert the pipeline's product equals punchbowl's cube written alike (data, uncertainty, headers but stamps)."""
    cube.meta["FILEVRSN"] = config.level0.file_version
    archive = ArchiveResource(root=str(tmp_path / "direct"))
    path = archive.product_path("3", product.file_type, "M", product.date_obs, config.level0.file_version)
    archive.write_cube(cube, path, skip_stats=False)
    assert path.name == Path(product.path).name
    ours, theirs = header_and_data(Path(config.archive_dir) / product.path), header_and_data(path)
    assert ours[0] == theirs[0]
    np.testing.assert_array_equal(ours[1], theirs[1])
    np.testing.assert_array_equal(ours[2], theirs[2])


def leaves(node: dict) -> set[str]:
    """Telemetry files at the leaves of a lineage tree."""
    found = {t["file"] for t in node["telemetry"]}
    for parent in node["parents"]:
        found |= leaves(parent)
    return found


def files_in(node: dict) -> set[str]:
    """Every file of a lineage tree."""
    return {node["file"]}.union(*(files_in(p) for p in node["parents"]))


@pytest.mark.science
def test_pim_cim_become_starfield_models_ptm_ctm_pam_cam_and_vam_with_lineage(products_config, instance, tmp_path):
    from punchbowl.level3.flow import generate_level3_low_noise_flow, level3_core_flow

    config = products_config
    root = Path(config.archive_dir)
    run_chain_to_level2(config, instance)
    materialize(config, instance, [*FCORONA_KEYS, LEVEL3_PIM, LEVEL3_CIM], HOURS)

    # Starfield models: 11:00 has no PIM/CIM before it (refused, in the metadata and the catalog);
    # 12:00 and 13:00 take every PIM/CIM within an hour either side, and nothing else.
    materialize(config, instance, STARFIELD_KEYS, GRID)
    values = metadata(instance, starfield_key("clear"), GRID[0])
    assert values["products_refused"] == 1 and "0 CIM before" in values["not_made"][0]["reason"]
    with CatalogResource(url=config.catalog_url).session() as session:
        refused = session.scalars(select(ModelRefusal).where(ModelRefusal.product_code.in_(("PS", "CS")))).all()
        assert sorted((r.product_code, f"{r.reference_time:%H:%M}") for r in refused) == [
            ("CS", "11:00"),
            ("PS", "11:00"),
        ]
    models = products(config, "3", ["PS", "CS"])
    assert sorted((m.file_type, f"{m.date_obs:%H:%M}") for m in models) == sorted(
        (code, hour) for code in ("CS", "PS") for hour in ("12:00", "13:00")
    )
    for model in models:
        source = products(config, "3", ["PI" if model.file_type == "PS" else "CI"])
        expected = [p.id for p in source if abs(p.date_obs - model.date_obs) < timedelta(hours=1)]
        assert expected and sorted(p.id for p in parents(config, model)) == sorted(expected)

    # PTM/CTM: one per PIM/CIM; the pipeline's own pair between 12:00 and 13:00, a bootstrap pair elsewhere.
    materialize(config, instance, [LEVEL3_PTM, LEVEL3_CTM], HOURS)
    ptm, ctm = products(config, "3", ["PT"]), products(config, "3", ["CT"])
    assert len(ptm) == len(products(config, "3", ["PI"])) and len(ctm) == len(products(config, "3", ["CI"]))
    for product in ptm + ctm:
        used = [p for p in parents(config, product) if p.file_type in ("PS", "CS")]
        [source] = [p for p in parents(config, product) if p.file_type in ("PI", "CI")]
        assert source.acquisition_time == product.acquisition_time and len(used) == 2
        if NOON <= product.date_obs < ONE:
            assert {(p.state, p.date_obs) for p in used} == {("created", NOON), ("created", ONE)}
        else:
            assert {p.state for p in used} == {"active"}
    hour_values = metadata(instance, LEVEL3_CTM, HOURS[1])
    assert hour_values["products_made"] >= 1 and {o for _, _, o in hour_values["input_models"]} == {"pipeline"}
    assert {o for _, _, o in metadata(instance, LEVEL3_CTM, HOURS[0])["input_models"]} == {"delivered"}

    # Parity: one CTM and one PTM against direct calls of level3_core_flow on the same mosaic and models
    # (with the starfield subtraction's fix, without which punchbowl fails on every PIM).
    for made, code in ((ctm, "CI"), (ptm, "PI")):
        [product] = [p for p in made if NOON <= p.date_obs < ONE][:1]
        inputs = parents(config, product)
        [source] = [p for p in inputs if p.file_type == code]
        before, after = sorted((p for p in inputs if p.file_type == STARFIELD_CODES[code]), key=lambda p: p.date_obs)
        with starfield_subtraction_on_sky():
            [direct] = level3_core_flow(
                [str(root / source.path)],
                nfi_list=[None],
                before_starfield_path=str(root / before.path),
                after_starfield_path=str(root / after.path),
                nfi_wfi_divide_radius=None,
            )
        assert_equals_direct(config, product, direct, tmp_path)

    # A new PSM of 13:00 (one PIM a side at most: one of the two before 13:00 left out): `punchpipe
    # affected` lists exactly the PTM made with it (12:53 and 12:57, hour 12); Dagster marks stale the
    # PTM hours whose window it brackets (12:00 and 13:00, one more than changed, as for PIM in
    # test_level3_chain), not the CTM; their re-run rewrites only those, and they are fresh again.
    assert stale_status(config, instance, LEVEL3_PTM, HOURS) == dict.fromkeys(HOURS, "FRESH")
    [old] = [m for m in models if (m.file_type, m.date_obs) == ("PS", ONE)]
    old_inputs = parents(config, old)
    config.level3.starfield.max_inputs_per_half = 1
    materialize(config, instance, [starfield_key("polarized")], [GRID[2]])
    [new] = [m for m in products(config, "3", ["PS"]) if m.id == old.id]
    assert new.sha256 != old.sha256 and len(parents(config, new)) == len(old_inputs) - 1 == 2
    with CatalogResource(url=config.catalog_url).session() as session:
        affected = affected_products(session, find_product(session, Path(new.path).name))
    used = [p for p in ptm if any(m.id == old.id for m in parents(config, p))]
    assert sorted(p.id for p in affected) == sorted(p.id for p in used)
    assert sorted(f"{p.date_obs:%H:%M}" for p in used) == ["12:53", "12:57"]
    assert_new_model_stales_exactly(config, instance, LEVEL3_PTM, LEVEL3_CTM, HOURS, ["PT", "CT"], used)
    ptm = products(config, "3", ["PT"])

    # PAM/CAM: every bin with a mosaic waits while its wait lasts, then is made from what exists, flagged.
    config.level3.low_noise.wait_hours = 24 * 365 * 100
    materialize(config, instance, [LEVEL3_PAM, LEVEL3_CAM], [DAY])
    waiting = metadata(instance, LEVEL3_CAM, DAY)
    assert waiting["products_made"] == 0 and waiting["products_waiting"] >= 1
    assert products(config, "3", ["PA", "CA"]) == []
    config.level3.low_noise.wait_hours = 0
    materialize(config, instance, [LEVEL3_PAM, LEVEL3_CAM], [DAY])
    for code, inputs_code, complete in (("CA", "CT", 4), ("PA", "PT", 8)):
        averages = products(config, "3", [code])
        mosaics = products(config, "3", [inputs_code])
        bins = {}
        for mosaic in mosaics:
            midnight = mosaic.date_obs.replace(hour=0, minute=0, second=0, microsecond=0)
            start = midnight + ((mosaic.date_obs - midnight) // timedelta(minutes=32)) * timedelta(minutes=32)
            bins.setdefault(start + timedelta(minutes=16), []).append(mosaic.id)
        assert sorted(a.date_obs for a in averages) == sorted(bins)
        for average in averages:
            assert sorted(p.id for p in parents(config, average)) == sorted(bins[average.date_obs])
            assert average.flags == f"incomplete bin: {len(bins[average.date_obs])} of {complete} inputs"
    assert metadata(instance, LEVEL3_CAM, DAY)["products_flagged"] == len(products(config, "3", ["CA"]))
    # Parity: one CAM and one PAM against direct calls of generate_level3_low_noise_flow on the same mosaics.
    for code in ("CA", "PA"):
        average = products(config, "3", [code])[-1]
        paths = sorted(str(root / p.path) for p in parents(config, average))
        [direct] = generate_level3_low_noise_flow(paths, None, reference_time=average.date_obs)
        assert_equals_direct(config, average, direct, tmp_path)

    # VAM: the 12:00 bin has enough PTM (made, dated at the bin's centre); the 06:00 bin has one.
    materialize(config, instance, [LEVEL3_VAM], VELOCITY_BINS)
    early = [p for p in ptm if datetime(2025, 8, 1, 6) <= p.date_obs < NOON]
    late = [p for p in ptm if NOON <= p.date_obs < datetime(2025, 8, 1, 18)]
    assert len(early) < 2 <= len(late), (early, late)
    [vam] = products(config, "3", ["VA"])
    assert vam.date_obs == datetime(2025, 8, 1, 15)
    assert sorted(p.id for p in parents(config, vam)) == sorted(p.id for p in late)
    assert metadata(instance, LEVEL3_VAM, VELOCITY_BINS[0])["products_refused"] == 1

    # Lineage of a CAM and the VAM walks down to the telemetry, through the models they were made with.
    with CatalogResource(url=config.catalog_url).session() as session:
        [cam] = [a for a in products(config, "3", ["CA"]) if any(NOON <= p.date_obs < ONE for p in parents(config, a))]
        for product in (cam, vam):
            tree = lineage_tree(session, session.get(type(product), product.id))
            telemetry = leaves(tree)
            assert telemetry and all(name.endswith(".tlm") for name in telemetry), telemetry
            names = files_in(tree)
            assert any("_CSM_" in n or "_PSM_" in n for n in names) and any("_L2_" in n for n in names)
