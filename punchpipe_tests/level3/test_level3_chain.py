"""Level 3 through Dagster: Level 2 layers to F-corona models and PIM/CIM, lineage, re-runs, parity with punchbowl."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from punchpipe_assets.level2.assets import LEVEL2_CTM, LEVEL2_PTM, level2_layers_key
from punchpipe_assets.level3.assets import LEVEL3_CIM, LEVEL3_PIM, POLARIZATIONS, fcorona_key
from punchpipe_assets.lineage import affected_products, find_product
from punchpipe_assets.resources import ArchiveResource, CatalogResource
from punchpipe_assets.resources.catalog import ModelRefusal, Wait
from punchpipe_assets.sensors.landing import scan_landing
from punchpipe_assets.simulate import simulate
from punchpipe_assets.status import catalog_status
from punchpipe_tests.chain import (
    SIZE,
    WFI,
    assert_new_model_stales_exactly,
    deliver_set,
    materialize,
    products,
    small_mosaic_config,
    stage_keys,
    stale_status,
)
from punchpipe_tests.level2.test_mosaics import header_and_data, metadata, parents

#: Two bursts of telemetry around the grid times 12:00 and 13:00 (models every hour, one hour either side):
#: the cadence slot of 11:56 (a polarized and a clear group), those of 12:52, 12:56 and 13:00 (two polarized
#: groups in the hour before 13:00, so that a polarized model of 13:00 capped at one a side differs).
BURSTS = ((datetime(2025, 8, 1, 11, 56), 4 / 60), (datetime(2025, 8, 1, 12, 52), 12 / 60))
HOURS = ["2025-08-01-11:00", "2025-08-01-12:00", "2025-08-01-13:00"]
GRID = ["2025-08-01-11:00", "2025-08-01-12:00", "2025-08-01-13:00"]
LEVEL2_KEYS = [LEVEL2_PTM, LEVEL2_CTM, *[level2_layers_key(c) for c in WFI]]
FCORONA_KEYS = [fcorona_key(c, p) for c in WFI for p in POLARIZATIONS]


@pytest.fixture
def backend() -> str:
    """Run the chain on SQLite only."""
    return "sqlite"


@pytest.fixture
def level3_config(config):
    config = small_mosaic_config(config)
    config.level3.fcorona.spacing_hours = 1
    config.level3.fcorona.half_window_hours = 1
    config.level3.fcorona.min_inputs_per_half = 1
    config.level3.fcorona.num_workers = 1
    config.level3.fcorona.impossible_after_hours = 24 * 365 * 10  # the data are from 2025: refused, not given up
    return config


def run_chain_to_level2(config, instance) -> None:
    """Simulate the bursts, deliver calibration and bootstrap models, make Level 0 to the Level 2 layers."""
    for index, (start, duration) in enumerate(BURSTS):
        report = simulate(start, duration, Path(config.home) / f"downlinks-{index}", size=SIZE, seed=index, cameras=WFI)
        for path in report.files:
            shutil.copy(path, Path(config.landing_dir) / path.name)
    scan_landing(CatalogResource(url=config.catalog_url), config, max_files=10**6)
    deliver_set(config, BURSTS[0][0] - timedelta(days=1))
    # One run for every stage (Dagster orders the steps), as a backfill of the chain would.
    stages = [key for stage in ("level0", "level1_early", "level1_late") for key in stage_keys(stage)]
    materialize(config, instance, [*stages, *LEVEL2_KEYS], HOURS)


def test_layers_become_f_corona_models_and_pim_cim_unchanged_on_rerun_stale_with_a_new_model(
    level3_config, instance, tmp_path
):
    from punchbowl.level3.flow import level3_PIM_CIM_flow

    config = level3_config
    run_chain_to_level2(config, instance)
    materialize(config, instance, FCORONA_KEYS, GRID)

    # 11:00 has no layer before it: refused with the reason, in the metadata and the catalog.
    values = metadata(instance, fcorona_key(WFI[0], "clear"), GRID[0])
    assert values["products_refused"] == 1 and "0 layers before" in values["not_made"][0]["reason"]
    with CatalogResource(url=config.catalog_url).session() as session:
        refused = session.scalars(select(ModelRefusal).where(ModelRefusal.reference_time == datetime(2025, 8, 1, 11)))
        assert sorted(f"{r.product_code}{r.observatory}" for r in refused) == ["CF1", "CF2", "CF3", "PF1", "PF2", "PF3"]
        # Each is requested again by the waits sensor when it would be given up (its window's end + the wait).
        waits = session.scalars(select(Wait).where(Wait.partition_key == GRID[0])).all()
        assert sorted(w.asset_key for w in waits) == sorted(k.to_user_string() for k in FCORONA_KEYS)
        give_up = datetime(2025, 8, 1, 12) + timedelta(hours=config.level3.fcorona.impossible_after_hours)
        assert {w.until for w in waits} == {give_up}

    # 12:00 and 13:00: every layer of the camera within an hour either side, and nothing else.
    models = products(config, "3", ["CF", "PF"])
    assert sorted((m.file_type, m.observatory, f"{m.date_obs:%H:%M}") for m in models) == sorted(
        (code, c.obs, hour) for code in ("CF", "PF") for c in WFI for hour in ("12:00", "13:00")
    )
    layers = {code: products(config, "2", [code]) for code in ("XR", "XP")}
    for m in models:
        layer_code = "XR" if m.file_type == "CF" else "XP"
        expected = [
            p.id
            for p in layers[layer_code]
            if p.observatory == m.observatory and abs(p.date_obs - m.date_obs) < timedelta(hours=1)
        ]
        assert sorted(p.id for p in parents(config, m)) == sorted(expected) and expected

    materialize(config, instance, [LEVEL3_PIM, LEVEL3_CIM], HOURS)
    pim, cim = products(config, "3", ["PI"]), products(config, "3", ["CI"])
    assert len(pim) == len(products(config, "2", ["PT"])) and len(cim) == len(products(config, "2", ["CT"]))
    noon, one = datetime(2025, 8, 1, 12), datetime(2025, 8, 1, 13)
    for product in pim + cim:
        used = sorted(
            (p for p in parents(config, product) if p.level == "3"), key=lambda p: (p.observatory, p.date_obs)
        )
        assert len(used) == 6 and [p.observatory for p in used] == ["1", "1", "2", "2", "3", "3"]
        if noon <= product.date_obs < one:  # bracketed by the pipeline's own models of 12:00 and 13:00
            assert {(p.state, p.date_obs) for p in used} == {("created", noon), ("created", one)}
        else:  # before 12:00 or after 13:00 the pipeline has one side only: a bootstrap pair
            assert {p.state for p in used} == {"active"}
    values = metadata(instance, LEVEL3_CIM, HOURS[1])
    origins = {origin for _, _, origin in values["input_models"]}
    assert values["products_made"] >= 1 and origins == {"pipeline"}
    assert {origin for _, _, origin in metadata(instance, LEVEL3_CIM, HOURS[0])["input_models"]} == {"delivered"}
    assert {"CIM", "PIM", "CF1", "PF3"} <= set(catalog_status(config)["levels"]["3"])

    # An unchanged re-run remakes nothing.
    before = {p.id: p.sha256 for p in products(config, "3", ["CF", "PF", "PI", "CI"])}
    materialize(config, instance, FCORONA_KEYS, GRID)
    materialize(config, instance, [LEVEL3_PIM, LEVEL3_CIM], HOURS)
    assert {p.id: p.sha256 for p in products(config, "3", ["CF", "PF", "PI", "CI"])} == before
    assert metadata(instance, LEVEL3_CIM, HOURS[1])["products_made"] == 0
    assert metadata(instance, fcorona_key(WFI[1], "polarized"), GRID[1])["products_unchanged"] == 1

    # Parity: one CIM against a direct call of level3_PIM_CIM_flow on the same layers and models.
    [product] = [p for p in cim if noon <= p.date_obs < one][:1]
    inputs = parents(config, product)
    root = Path(config.archive_dir)
    layer_paths = [
        str(root / p.path) for p in sorted((p for p in inputs if p.level == "2"), key=lambda p: p.observatory)
    ]
    chosen = sorted((p for p in inputs if p.level == "3"), key=lambda p: (p.observatory, p.date_obs))
    [direct] = level3_PIM_CIM_flow(
        layer_paths, [str(root / p.path) for p in chosen[::2]], [str(root / p.path) for p in chosen[1::2]]
    )
    direct.meta["FILEVRSN"] = config.level0.file_version
    archive = ArchiveResource(root=str(tmp_path / "direct"))
    path = archive.product_path("3", "CI", "M", product.date_obs, config.level0.file_version)
    archive.write_cube(direct, path, skip_stats=False)
    assert path.name == Path(product.path).name
    ours, theirs = header_and_data(root / product.path), header_and_data(path)
    assert ours[0] == theirs[0]
    np.testing.assert_array_equal(ours[1], theirs[1])

    # A new PF1 model of 13:00 (one layer a side at most: one of the two before 13:00 left out).
    assert stale_status(config, instance, LEVEL3_PIM, HOURS) == dict.fromkeys(HOURS, "FRESH")
    [old] = [m for m in models if (m.file_type, m.observatory, m.date_obs) == ("PF", "1", one)]
    old_inputs = parents(config, old)
    config.level3.fcorona.max_inputs_per_half = 1
    materialize(config, instance, [fcorona_key(WFI[0], "polarized")], [GRID[2]])
    [new] = [m for m in products(config, "3", ["PF"]) if m.id == old.id]
    assert new.sha256 != old.sha256 and len(parents(config, new)) == len(old_inputs) - 1 == 2
    # `punchpipe affected` lists exactly the PIM made with it: the groups of 12:53 and 12:57 (hour 12),
    # bracketed by the pipeline's 12:00 and 13:00.
    with CatalogResource(url=config.catalog_url).session() as session:
        affected = affected_products(session, find_product(session, Path(new.path).name))
    used = [p for p in pim if any(m.id == old.id for m in parents(config, p))]
    assert sorted(p.id for p in affected) == sorted(p.id for p in used)
    assert sorted(f"{p.date_obs:%H:%M}" for p in used) == ["12:53", "12:57"] and {p.partition_key for p in used} == {
        HOURS[1]
    }
    # Dagster marks stale the PIM hours whose window the 13:00 model brackets (12:00 and 13:00; 14:00 is
    # not made), not the CIM. Hour 13:00 is one more than changed: its group of 13:01 would take the
    # 13:00 model with a 14:00 one, but there is none yet so it keeps a bootstrap pair. A partition
    # mapping cannot see which groups an hour holds; the re-run of that hour rewrites nothing.
    assert_new_model_stales_exactly(config, instance, LEVEL3_PIM, LEVEL3_CIM, HOURS, ["CI", "PI"], used)
