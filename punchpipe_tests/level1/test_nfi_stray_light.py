"""NFI dynamic stray light (``XR4`` -> ``ZR4``) through Dagster: lineage, parity with punchbowl, incremental."""

import inspect
from datetime import timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pydantic
import pytest
from astropy.io import fits
from sqlalchemy import select

from punchpipe_assets.calibration.synthesize import synthesize_calibration
from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.cli import run_process
from punchpipe_assets.config import load_config
from punchpipe_assets.config_level1 import NfiStrayLightSettings
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.level1.assets import level1_early_key, level1_nfi_stray_light_key
from punchpipe_assets.level1.nfi_stray_light import kernels_miss_frame
from punchpipe_assets.resources import ArchiveResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFile
from punchpipe_assets.sensors.calibration import scan_calibration_landing
from punchpipe_assets.simulate import simulate
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.level0.test_assets import land
from punchpipe_tests.level1.test_full_size import _comparable_header

# punchbowl places its stray-light kernels in flight pixels whatever the frame size: frames below
# about 1200 px cannot be processed (kernels_miss_frame). The test runs flight-size frames with a
# coarse binning (16: a 128 x 128 inversion) and 8 kernels, about 25 s a call on an idle core.
SIZE = 2048
NFI = CAMERA_BY_OBS["4"]
REDUCED = {"bin_factor": 16, "fwd_mat_nstray_kernels": 8, "thread_count": 2}
PARTITION = "2025-08-01-12:00"
# One minute of telemetry holding NFI's clear frame of 12:03:32 (and nothing else).
TELEMETRY_START, TELEMETRY_HOURS = SIMULATION_START + timedelta(minutes=3), 1 / 60


def test_settings_default_to_punchbowl_and_scale_the_glint_mask_with_the_frame():
    from punchbowl import constants
    from punchbowl.level1.nfi_dynamic_stray_light import remove_nfi_stray_light

    defaults = {k: p.default for k, p in inspect.signature(remove_nfi_stray_light).parameters.items()}
    flight = NfiStrayLightSettings().arguments(2048)
    assert set(flight) == set(defaults) - {"datacube"}
    for name, value in flight.items():
        if defaults[name] is not None:
            assert value == defaults[name], name
    assert flight["fwd_mat_nstray_kernels"] is None and flight["bindown_shape"] == (512, 512)
    assert flight["sphere1_center"] == constants.GLINT_SPHERE1_CENTER
    assert flight["glint_sphere_radius"] == constants.GLINT_SPHERE_RADIUS
    assert flight["glint_bottom_cut"] == constants.GLINT_MASK_BOTTOM_CUT_OFF
    half = NfiStrayLightSettings().arguments(1024)
    assert half["sphere2_center"] == (270, 605) and half["glint_bottom_cut"] == 125
    assert half["bindown_shape"] == (256, 256)
    with pytest.raises(ValueError, match="does not bin"):
        NfiStrayLightSettings(bin_factor=16).arguments(1000)


def test_kernel_geometry_refuses_small_frames_in_words():
    assert kernels_miss_frame(2048, NfiStrayLightSettings()) is None
    assert kernels_miss_frame(2048, NfiStrayLightSettings(**REDUCED)) is None
    assert "misses the 32-px binned frame of a 128-px frame" in kernels_miss_frame(128, NfiStrayLightSettings())
    assert kernels_miss_frame(1024, NfiStrayLightSettings(fwd_mat_nstray_kernels=4))


def test_invalid_nfi_stray_light_setting_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("level1:\n  nfi_stray_light:\n    bin_factor: 0\n")
    with pytest.raises(pydantic.ValidationError, match="bin_factor"):
        load_config(path)
    path.write_text("level1:\n  nfi_stray_light:\n    glint: 3\n")
    with pytest.raises(pydantic.ValidationError, match="glint"):
        load_config(path)


def _materialize(config, instance, key: dg.AssetKey) -> dict:
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, partition_key=PARTITION, asset_selection=[key]).success
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[PARTITION]), limit=1
    ).records
    return {name: value.value for name, value in record.asset_materialization.metadata.items()}


@pytest.mark.science
@pytest.mark.parametrize("backend", ["sqlite"])  # the science, not the storage, is under test here
def test_nfi_stray_light_makes_zr4_with_lineage_like_punchbowl_and_only_once(config, catalog, instance, tmp_path):
    from punchbowl.data import load_ndcube_from_fits
    from punchbowl.level1.flow import level1_nfi_core_flow

    config.calibration_image_size = SIZE
    config.level1.nfi_stray_light = NfiStrayLightSettings(**REDUCED)
    report = simulate(TELEMETRY_START, TELEMETRY_HOURS, tmp_path / "sim", size=SIZE, seed=3, cameras=[NFI])
    land(report.files, config)
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0
    for path in synthesize_calibration(
        tmp_path / "calibration", SIMULATION_START - timedelta(days=2), size=SIZE, cameras=[NFI]
    ):
        path.rename(Path(config.calibration_landing_dir) / path.name)
    archive_root = Path(config.archive_dir)
    scan_calibration_landing(catalog, ArchiveResource(root=str(archive_root)), config)
    assert _materialize(config, instance, level1_early_key(NFI))["frames_made"] == 1

    key = level1_nfi_stray_light_key(NFI)
    first = _materialize(config, instance, key)
    with catalog.session() as session:
        [early] = session.scalars(select(ProductFile).where(ProductFile.file_type == "XR")).all()
        [made] = session.scalars(select(ProductFile).where(ProductFile.file_type == "ZR")).all()
        parents = session.scalars(
            select(ProductFile)
            .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
            .where(FileRelationship.child_id == made.id)
        ).all()
        assert [p.path for p in parents] == [early.path]  # lineage: the early frame, no calibration file
        assert (made.level, made.observatory, made.date_obs, made.partition_key) == (
            "1",
            "4",
            early.date_obs,
            PARTITION,
        )
    early_name, made_name, made_sha = Path(early.path).name, Path(made.path).name, made.sha256
    assert made_name == early_name.replace("_XR4_", "_ZR4_")
    assert (first["frames_made"], first["frames_failed"]) == (1, 0), first["not_made"]
    assert first["input_level1_early_files"] == [early_name]
    assert first["outputs"] == [{"path": made.path, "sha256": made_sha, "status": "made"}]

    # Science parity: punchbowl's flow called directly on the same early file with the same arguments,
    # written by the same writer (same name, other folder), both files read back by punchbowl.
    [cube] = level1_nfi_core_flow([str(archive_root / early.path)], **config.level1.nfi_stray_light.arguments(SIZE))
    direct_file = tmp_path / "direct" / made_name
    direct_file.parent.mkdir()
    ArchiveResource(root=str(tmp_path / "direct")).write_cube(cube, direct_file, skip_stats=False)
    pipeline_file = archive_root / made.path
    ours, direct = load_ndcube_from_fits(pipeline_file), load_ndcube_from_fits(direct_file)
    early_cube = load_ndcube_from_fits(archive_root / early.path)
    assert ours.meta["TYPECODE"].value == "ZR" and ours.data.shape == (SIZE, SIZE)
    assert not np.array_equal(ours.data, early_cube.data)  # stray light removed: not a vacuous match
    np.testing.assert_array_equal(ours.data, direct.data)
    np.testing.assert_array_equal(ours.uncertainty.array, direct.uncertainty.array)
    with fits.open(pipeline_file) as ours_hdul, fits.open(direct_file) as direct_hdul:
        assert [h.name for h in ours_hdul] == [h.name for h in direct_hdul]
        for ours_hdu, direct_hdu in zip(ours_hdul, direct_hdul, strict=True):
            assert _comparable_header(ours_hdu.header) == _comparable_header(direct_hdu.header)

    # Incremental: the same frame, arguments and code make nothing again.
    mtime = pipeline_file.stat().st_mtime_ns
    second = _materialize(config, instance, key)
    assert (second["frames_made"], second["frames_unchanged"]) == (0, 1)
    assert second["outputs"] == [{"path": made.path, "sha256": made_sha, "status": "unchanged"}]
    assert pipeline_file.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("backend", ["sqlite"])
def test_frames_too_small_for_punchbowls_kernels_fail_with_the_reason_and_the_check_warns(
    config, catalog, instance, tmp_path
):
    """At the fast tier's 128 px, punchbowl cannot run: the frame is recorded as failed, in words."""
    small = 128
    config.calibration_image_size = small
    report = simulate(TELEMETRY_START, TELEMETRY_HOURS, tmp_path / "sim", size=small, seed=3, cameras=[NFI])
    land(report.files, config)
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0
    calibration = synthesize_calibration(
        tmp_path / "calibration", SIMULATION_START - timedelta(days=2), size=small, cameras=[NFI]
    )
    for path in calibration:
        path.rename(Path(config.calibration_landing_dir) / path.name)
    scan_calibration_landing(catalog, ArchiveResource(root=str(config.archive_dir)), config)
    assert _materialize(config, instance, level1_early_key(NFI))["frames_made"] == 1

    key = level1_nfi_stray_light_key(NFI)
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, partition_key=PARTITION, asset_selection=[key])
    assert result.success  # a failed frame does not fail the step: the others would go on
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["frames_not_made"].value == 1
    metadata = _materialize(config, instance, key)
    assert (metadata["frames_made"], metadata["frames_failed"]) == (0, 1)
    [not_made] = metadata["not_made"]
    assert "misses the 32-px binned frame of a 128-px frame" in not_made["reason"]
    with catalog.session() as session:
        assert not session.scalars(select(ProductFile).where(ProductFile.file_type == "ZR")).all()
