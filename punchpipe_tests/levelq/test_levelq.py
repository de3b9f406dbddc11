"""QuickPUNCH through Dagster: CQM, CFM, CTM, QAM, parity with punchbowl, model grid and bins."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from sqlalchemy import select

from punchpipe_assets.bins import bin_of, bin_starts
from punchpipe_assets.grid_models import choose_inputs
from punchpipe_assets.level2.mosaics import reduced_trefoil
from punchpipe_assets.levelq.assets import LEVELQ_CFM, LEVELQ_CQM, LEVELQ_CTM, LEVELQ_QAM
from punchpipe_assets.levelq.models import QuickFCoronaBuilder
from punchpipe_assets.resources import ArchiveResource, CatalogResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFile
from punchpipe_tests.chain import materialize, products, run_chain_to_level1, small_mosaic_config
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.level2.test_mosaics import header_and_data, metadata, parents

PARTITION = f"{SIMULATION_START:%Y-%m-%d-%H:%M}"
DAY = f"{SIMULATION_START:%Y-%m-%d}"


def test_a_day_holds_exactly_45_bins_and_every_time_is_in_one():
    day = datetime(2025, 8, 1)
    starts = bin_starts(day, day + timedelta(days=1))
    assert len(starts) == 45 and starts[0] == day and starts[-1] + timedelta(minutes=32) == day + timedelta(days=1)
    assert bin_of(datetime(2025, 8, 1, 12, 20)) == datetime(2025, 8, 1, 12, 16)  # 12:00 is not a bin start
    assert bin_starts(datetime(2025, 8, 1, 12), datetime(2025, 8, 1, 13)) == [
        datetime(2025, 8, 1, 12, 16),
        datetime(2025, 8, 1, 12, 48),
    ]


def test_model_inputs_are_refused_below_the_minimum_and_chosen_reproducibly_above_the_maximum():
    rows = [ProductFile(id=i, date_obs=datetime(2025, 8, 1) + timedelta(minutes=8 * i)) for i in range(20)]
    when = datetime(2025, 8, 2)
    assert choose_inputs(rows[:2], 3, 10, 0, when) == ([], "2 inputs in the window, the minimum is 3")
    assert choose_inputs(rows[:5], 3, 10, 0, when) == (rows[:5], None)
    first, _ = choose_inputs(rows, 3, 10, 0, when)
    assert len(first) == 10 and first == choose_inputs(rows, 3, 10, 0, when)[0]  # seeded: the same choice
    assert first == sorted(first, key=lambda p: p.date_obs)
    assert first != choose_inputs(rows, 3, 10, 1, when)[0]  # another seed, another choice


@pytest.fixture
def quick_config(config):
    config = small_mosaic_config(config)
    config.levelq.incomplete_wait_hours = 0.0
    config.levelq.qam_wait_hours = 0.0
    return config


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the chain, not the storage: one backend
def test_quickpunch_chain_makes_cqm_ctm_and_qam_with_lineage_and_equals_punchbowl(quick_config, instance, tmp_path):
    from punchbowl.levelq.flow import levelq_CQM_core_flow, levelq_CTM_core_flow

    config = quick_config
    run_chain_to_level1(config, instance, SIMULATION_START, 0.75)
    materialize(config, instance, [LEVELQ_CQM, LEVELQ_CTM], [PARTITION])
    cqm, ctm = products(config, "Q", ["CQ"]), products(config, "Q", ["CT"])
    # 45 minutes: clear images at 12:03, 12:11, ..., 12:43: one CQM and one CTM each.
    assert len(cqm) == len(ctm) == 6
    archive = ArchiveResource(root=str(tmp_path / "direct"))
    wcs, shape = reduced_trefoil(8)
    # CQM parity: the same QR inputs through levelq_CQM_core_flow directly.
    quick = sorted((p for p in parents(config, cqm[0]) if p.file_type == "QR"), key=lambda p: p.observatory)
    assert [p.observatory for p in quick] == ["1", "2", "3"]
    [direct_cqm] = levelq_CQM_core_flow(
        [str(Path(config.archive_dir) / p.path) for p in quick], trefoil_wcs=wcs.deepcopy(), trefoil_shape=shape
    )
    path = archive.product_path("Q", "CQ", "M", cqm[0].date_obs, "1")
    archive.write_cube(direct_cqm, path, skip_stats=False)
    assert path.name == Path(cqm[0].path).name
    for ours, theirs in zip(
        header_and_data(Path(config.archive_dir) / cqm[0].path), header_and_data(path), strict=True
    ):
        if isinstance(ours, dict):
            assert ours == theirs
        else:
            np.testing.assert_array_equal(ours, theirs)
    # CTM parity, with the two bootstrap CFM the pipeline chose (the newest two before the mosaic).
    models = sorted((p for p in parents(config, ctm[0]) if p.file_type == "CF"), key=lambda p: p.date_obs)
    assert [p.date_obs for p in models] == [
        SIMULATION_START - timedelta(days=1, hours=6),
        SIMULATION_START - timedelta(days=1),
    ]
    [direct_ctm] = levelq_CTM_core_flow(
        [str(Path(config.archive_dir) / cqm[0].path)], *[str(Path(config.archive_dir) / m.path) for m in models]
    )
    path = archive.product_path("Q", "CT", "M", ctm[0].date_obs, "1")
    archive.write_cube(direct_ctm, path, skip_stats=False)
    ours, theirs = header_and_data(Path(config.archive_dir) / ctm[0].path), header_and_data(path)
    np.testing.assert_array_equal(ours[1], theirs[1])
    assert ours[0] == theirs[0]

    # QAM: the bin 12:16-12:48 holds 4 CTM (complete); 12:00 is no bin start, 11:44-12:16 holds 2 (incomplete).
    materialize(config, instance, [LEVELQ_QAM], [DAY])
    qam = products(config, "Q", ["QA"])
    assert [(p.date_obs, p.flags) for p in qam] == [
        (datetime(2025, 8, 1, 12, 0), "incomplete bin: 2 of 4 inputs"),
        (datetime(2025, 8, 1, 12, 32), None),
    ]
    assert len([p for p in parents(config, qam[1]) if p.file_type == "CT"]) == 4
    values = metadata(instance, LEVELQ_QAM, DAY)
    assert (values["products_made"], values["products_flagged"]) == (2, 1)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the chain, not the storage: one backend
def test_quick_f_corona_model_refused_with_too_few_mosaics_then_built_and_used(quick_config, instance):
    config = quick_config
    config.levelq.model_min_inputs = 3
    run_chain_to_level1(config, instance, SIMULATION_START, 0.25)
    materialize(config, instance, [LEVELQ_CQM], [PARTITION])
    assert len(products(config, "Q", ["CQ"])) == 2
    grid_time = "2025-08-01-18:00"
    materialize(config, instance, [LEVELQ_CFM], [grid_time])
    values = metadata(instance, LEVELQ_CFM, grid_time)
    assert (
        values["products_refused"] == 1
        and "2 inputs in the window, the minimum is 3" in values["not_made"][0]["reason"]
    )
    assert products(config, "Q", ["CF"]) == [] or all(p.state != "created" for p in products(config, "Q", ["CF"]))

    config.levelq.model_min_inputs = 2
    materialize(config, instance, [LEVELQ_CFM], [grid_time])
    [model] = [p for p in products(config, "Q", ["CF"]) if p.date_obs == datetime(2025, 8, 1, 18)]
    with CatalogResource(url=config.catalog_url).session() as session:
        inputs = session.scalars(
            select(ProductFile)
            .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
            .where(FileRelationship.child_id == model.id)
        ).all()
        assert sorted(p.file_type for p in inputs) == ["CQ", "CQ"]
        # The same inputs give the same model: a second build finds it unchanged.
        again = QuickFCoronaBuilder(session, ArchiveResource(root=str(config.archive_dir)), config).build(
            model.date_obs
        )
    assert again.status == "unchanged" and again.sha256 == model.sha256
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(LEVELQ_CFM, "models_made")]
    )
    assert next(iter(check.values())).evaluation.passed
