"""Level 2 through Dagster: groups to trefoil mosaics and layers, lineage, parity with punchbowl, incomplete groups."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.level2.assets import LEVEL2_CTM, LEVEL2_PTM, level2_layers_key
from punchpipe_assets.level2.mosaics import reduced_trefoil
from punchpipe_assets.lineage import find_product, lineage_tree
from punchpipe_assets.resources import ArchiveResource, CatalogResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFailure, ProductFile, Wait
from punchpipe_assets.sensors.waits import expired_wait_requests
from punchpipe_tests.chain import (
    WFI,
    forget,
    materialize,
    products,
    run_chain_to_level1,
    small_mosaic_config,
    stage_keys,
)
from punchpipe_tests.conftest import SIMULATION_START

PARTITION = f"{SIMULATION_START:%Y-%m-%d-%H:%M}"
LEVEL2_KEYS = [LEVEL2_PTM, LEVEL2_CTM, *[level2_layers_key(c) for c in WFI]]
#: Header keywords that differ between two calls of the same flow on the same inputs (and FITS bookkeeping).
STAMPS = {"DATE", "CHECKSUM", "DATASUM", "HISTORY", "COMMENT", "ZDITHER0"}


def metadata(instance, key: dg.AssetKey, partition: str = PARTITION) -> dict:
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def data_version(instance, key: dg.AssetKey, partition: str = PARTITION) -> str:
    """Return the data version of an asset partition's latest materialization."""
    from dagster._core.definitions.data_version import extract_data_version_from_entry

    record = instance.get_latest_data_version_record(key, partition_key=partition)
    return extract_data_version_from_entry(record.event_log_entry).value


def parents(config, product: ProductFile) -> list[ProductFile]:
    with CatalogResource(url=config.catalog_url).session() as session:
        return list(
            session.scalars(
                select(ProductFile)
                .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
                .where(FileRelationship.child_id == product.id)
            )
        )


def header_and_data(path: Path) -> tuple[dict, np.ndarray, np.ndarray | None]:
    with fits.open(path) as hdul:
        header = {k: v for k, v in hdul[1].header.items() if k not in STAMPS}
        uncertainty = np.asarray(hdul[2].data) if len(hdul) > 2 and hdul[2].data is not None else None
        return header, np.asarray(hdul[1].data), uncertainty


@pytest.fixture
def mosaic_config(config):
    return small_mosaic_config(config)


def test_groups_become_mosaics_and_layers_with_lineage_down_to_telemetry(mosaic_config, instance):
    config = mosaic_config
    run_chain_to_level1(config, instance, SIMULATION_START, 0.25)
    materialize(config, instance, LEVEL2_KEYS, [PARTITION])

    ptm, ctm = products(config, "2", ["PT"]), products(config, "2", ["CT"])
    # 15 minutes: polarized triplets at 12:00, 12:04, 12:08, 12:12 and clear images at 12:03 and 12:11.
    assert (len(ptm), len(ctm)) == (4, 2)
    layers = Counter((p.file_type, p.observatory) for p in products(config, "2", ["XP", "XR"]))
    assert layers == {**{("XP", c.obs): 4 for c in WFI}, **{("XR", c.obs): 2 for c in WFI}}
    for mosaic in ptm + ctm:
        inputs = [p for p in parents(config, mosaic) if p.level == "1"]
        expected = 9 if mosaic.file_type == "PT" else 3
        assert len([p for p in inputs if p.file_type in ("PM", "PZ", "PP", "CR")]) == expected
        assert mosaic.flags is None  # complete
        assert [p.file_type for p in parents(config, mosaic) if p.level == "2"] == ["AL"]  # the alphas file
        on_disk = Path(config.archive_dir) / mosaic.path
        assert ArchiveResource(root=str(config.archive_dir)).relative(on_disk) == mosaic.path
        import hashlib

        assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == mosaic.sha256
    with CatalogResource(url=config.catalog_url).session() as session:
        tree = lineage_tree(session, find_product(session, Path(ptm[0].path).name))
    # mosaic <- late Level 1 <- early Level 1 <- Level 0 <- telemetry packets (and calibration files on the way)
    late = [node for node in tree["parents"] if node["file"].startswith("PUNCH_L1_P")]
    early = [node for node in late[0]["parents"] if node["file"].startswith("PUNCH_L1_X")]
    level0 = [node for node in early[0]["parents"] if node["file"].startswith("PUNCH_L0_")]
    assert len(late) == 9 and level0[0]["telemetry"][0]["packets"]["image"] > 0
    assert any(node["file"].startswith("PUNCH_L1_S") for node in late[0]["parents"])  # the stray-light models

    values = metadata(instance, LEVEL2_PTM)
    assert values["groups_made"] == 4 and values["groups_incomplete"] == 0
    assert {(name[:12], origin) for name, _, _, origin in values["input_files"]} >= {
        ("PUNCH_L2_ALM", "delivered"),
        ("PUNCH_L1_PM1", "pipeline"),
    }
    assert {o["sha256"] for o in values["outputs"]} == {p.sha256 for p in ptm}
    layer_values = metadata(instance, level2_layers_key(WFI[0]))
    assert {o["code"] for o in layer_values["outputs"]} == {"XP", "XR"}

    # Nothing changed: nothing is remade, and the data versions stay.
    before = {p.path: (Path(config.archive_dir) / p.path).stat().st_mtime_ns for p in ptm + ctm}
    versions = {k: data_version(instance, k) for k in LEVEL2_KEYS}
    materialize(config, instance, LEVEL2_KEYS, [PARTITION])
    assert metadata(instance, LEVEL2_PTM)["groups_unchanged"] == 4
    assert {p: (Path(config.archive_dir) / p).stat().st_mtime_ns for p in before} == before
    assert {k: data_version(instance, k) for k in LEVEL2_KEYS} == versions


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_pipeline_mosaics_equal_direct_punchbowl_calls(mosaic_config, instance, tmp_path):
    """Same inputs: the pipeline's CTM and PTM equal level2_core_flow called directly (data and headers)."""
    from punchbowl.level2.flow import level2_core_flow

    config = mosaic_config
    run_chain_to_level1(config, instance, SIMULATION_START, 0.1)
    materialize(config, instance, LEVEL2_KEYS, [PARTITION])
    archive = ArchiveResource(root=str(tmp_path / "direct"))
    wcs, shape = reduced_trefoil(8)
    for code in ("CT", "PT"):
        mosaic = products(config, "2", [code])[0]
        inputs = sorted(
            (p for p in parents(config, mosaic) if p.level == "1" and p.file_type[0] in "CP"),
            key=lambda p: (p.observatory, p.file_type),
        )
        [alphas] = [p for p in parents(config, mosaic) if p.file_type == "AL"]
        cubes = level2_core_flow(
            [str(Path(config.archive_dir) / p.path) for p in inputs],
            [[] for _ in inputs],
            polarized=code == "PT",
            trefoil_wcs=wcs.deepcopy(),
            trefoil_shape=shape,
            image_masks=[None] * len(inputs),
            alphas_file=str(Path(config.archive_dir) / alphas.path),
        )
        direct = archive.product_path("2", code, "M", mosaic.date_obs, "1")
        archive.write_cube(cubes[0], direct, skip_stats=False)
        pipeline_header, pipeline_data, pipeline_unc = header_and_data(Path(config.archive_dir) / mosaic.path)
        direct_header, direct_data, direct_unc = header_and_data(direct)
        assert direct.name == Path(mosaic.path).name
        np.testing.assert_array_equal(pipeline_data, direct_data)
        np.testing.assert_array_equal(pipeline_unc, direct_unc)
        assert pipeline_header == direct_header
        assert np.isfinite(pipeline_data).mean() > 0.5 and np.nanmax(pipeline_data) > 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the chain, not the storage: one backend
def test_a_group_missing_a_failed_member_is_made_flagged_and_remade_when_the_member_comes(mosaic_config, instance):
    config = mosaic_config
    config.level2.incomplete_wait_hours = 0.0
    run_chain_to_level1(config, instance, SIMULATION_START, 0.1)
    [victim] = [p for p in products(config, "0", ["PZ"]) if p.observatory == "2"][:1]
    victim_path = Path(config.archive_dir) / victim.path
    backup = victim_path.with_name("backup.fits")
    shutil.copy(victim_path, backup)
    # Its early and late Level 1 are gone, and early Level 1 cannot be made from its damaged Level 0.
    assert (
        len(
            forget(
                config,
                (ProductFile.level == "1")
                & (ProductFile.observatory == "2")
                & ProductFile.file_type.in_(("XZ", "PZ"))
                & (ProductFile.date_obs == victim.date_obs),
            )
        )
        == 2
    )
    victim_path.write_bytes(victim_path.read_bytes()[:5000])
    for stage in ("level1_early", "level1_late"):
        materialize(config, instance, stage_keys(stage), [PARTITION])
    with CatalogResource(url=config.catalog_url).session() as session:
        failure = session.scalars(select(ProductFailure).where(ProductFailure.input_id == victim.id)).one()
        assert failure.status == "failed" and failure.product_code == "XZ"

    materialize(config, instance, LEVEL2_KEYS, [PARTITION])
    [ptm] = products(config, "2", ["PT"])
    assert ptm.flags.startswith("incomplete group: 8 of 9 members")
    assert "PZ2 missing (failed:" in ptm.flags and "left out (incomplete triplet): PM2, PP2" in ptm.flags
    assert {p.observatory for p in parents(config, ptm) if p.level == "1" and p.file_type.startswith("P")} == {"1", "3"}
    with fits.open(Path(config.archive_dir) / ptm.path) as hdul:
        assert hdul[1].header["HAS_WFI2"] == 0
        assert any("incomplete group" in str(line) for line in hdul[1].header["HISTORY"])
    values = metadata(instance, LEVEL2_PTM)
    assert values["groups_incomplete"] == 1
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(LEVEL2_PTM, "groups_made")]
    )
    assert not next(iter(check.values())).evaluation.passed
    incomplete_path = Path(config.archive_dir) / ptm.path

    # The member is made after all: the mosaic is remade complete, the incomplete file replaced.
    shutil.copy(backup, victim_path)
    for stage in ("level1_early", "level1_late"):
        materialize(config, instance, stage_keys(stage), [PARTITION])
    materialize(config, instance, LEVEL2_KEYS, [PARTITION])
    [ptm] = products(config, "2", ["PT"])
    assert ptm.flags is None
    assert len([p for p in parents(config, ptm) if p.level == "1" and p.file_type.startswith("P")]) == 9
    assert (Path(config.archive_dir) / ptm.path).exists()
    assert incomplete_path == Path(config.archive_dir) / ptm.path or not incomplete_path.exists()
    with CatalogResource(url=config.catalog_url).session() as session:
        assert session.scalars(select(ProductFailure).where(ProductFailure.input_id == victim.id)).first() is None


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the chain, not the storage: one backend
def test_an_incomplete_group_waits_and_the_waits_sensor_requests_it_when_the_wait_is_over(mosaic_config, instance):
    config = mosaic_config
    # No telemetry of WFI 3 at all: its members are absent; the groups wait for them.
    run_chain_to_level1(config, instance, SIMULATION_START, 0.1, cameras=WFI[:2])
    config.level2.incomplete_wait_hours = 24 * 365 * 10  # the data are from 2025: still within the wait
    materialize(config, instance, LEVEL2_KEYS, [PARTITION])
    assert products(config, "2", ["PT", "CT"]) == []
    values = metadata(instance, LEVEL2_PTM)
    assert values["groups_waiting"] >= 1 and values["groups_made"] == 0
    assert all("PM3" in o["missing"] for o in values["not_made"] if o["group"].startswith("polarized"))
    definitions = build_definitions(config)
    repository = definitions.get_repository_def()
    with CatalogResource(url=config.catalog_url).session() as session:
        [wait] = session.scalars(select(Wait)).all()
        assert (wait.asset_key, wait.partition_key) == ("level2_ptm", PARTITION)
        assert expired_wait_requests(session, repository, 5) == []  # not over yet
        wait.until = SIMULATION_START  # the wait is over
    with CatalogResource(url=config.catalog_url).session() as session:
        [request] = expired_wait_requests(session, repository, 5)
    assert request.partition_key == PARTITION and set(request.asset_selection) == set(LEVEL2_KEYS)
    config.level2.incomplete_wait_hours = 0.0
    materialize(config, instance, LEVEL2_KEYS, [PARTITION])
    made = products(config, "2", ["PT", "CT"])
    assert made and all("incomplete group" in p.flags for p in made)
    with CatalogResource(url=config.catalog_url).session() as session:
        assert session.scalars(select(Wait)).all() == []  # nothing waits any more
