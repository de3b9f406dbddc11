"""Full-size (2048x2048) early Level 1 through Dagster against punchbowl's flow called directly: the science tier.

The pipeline's ``level1_early_{camera}`` products must be exactly what ``level1_early_core_flow``
makes from the same Level 0 file, calibration files and despike neighbours: the test picks those
inputs itself (calibration by file name, neighbours by time), not through the pipeline's selection.
"""

import re
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from punchpipe_assets.calibration.synthesize import synthesize_calibration
from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.cli import run_process
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.level1.assets import level1_early_key
from punchpipe_assets.resources import ArchiveResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFile
from punchpipe_assets.sensors.calibration import scan_calibration_landing
from punchpipe_assets.simulate import simulate
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.level0.test_assets import land

pytestmark = pytest.mark.science

SIZE = 2048
CAMERA = CAMERA_BY_OBS["1"]
PARTITION = "2025-08-01-12:00"
# Telemetry from 11:48 to 12:01:30. The partition holds two science frames (PM at 12:00:03, PZ at
# 12:01:23); each has three frames of its polarization in the 12 minutes before it, so punchbowl
# really despikes them (it skips despiking with fewer than 3 neighbours). The 11:00 frames are
# made at Level 0 only: they are neighbours, and keep the Level 1 part of the test short.
TELEMETRY_START = SIMULATION_START - timedelta(minutes=12)
TELEMETRY_HOURS = 13.5 / 60
CALIBRATION_DATE = SIMULATION_START - timedelta(days=2)
DESPIKE_WINDOW = timedelta(minutes=15)  # punchbowl's control segment: same camera and filter, +-15 min
MAX_NEIGHBOURS = 6

_NAME = re.compile(r"PUNCH_L(?P<level>\d)_(?P<code>[A-Z]{2})(?P<obs>\d)_(?P<time>\d{14})_v(?P<version>\w+)\.")

# Header keywords allowed to differ between the pipeline's file and the direct one, and why:
# - DATE: the time the product was made (level1_early_core_flow stamps datetime.now()).
# - CHECKSUM, DATASUM: FITS checksums of the HDU, written by astropy; CHECKSUM covers DATE.
# - HISTORY: each entry starts with the time it was added (History.add_now); compared below
#   without that time, so the processing steps and their parameters must still be the same.
# FILEVRSN is not exempt: both take it from the Level 0 file. FILENAME is not exempt: the direct
# cube is written under the pipeline file's name, in another folder.
WRITE_TIME_KEYWORDS = {"DATE", "CHECKSUM", "DATASUM"}
_HISTORY_TIME = re.compile(r"^\s*\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d => ")


def _parse(path: Path) -> tuple[str, datetime]:
    match = _NAME.match(path.name)
    return match["code"] + match["obs"], datetime.strptime(match["time"], "%Y%m%d%H%M%S")


def _comparable_header(header: fits.Header) -> tuple[dict, list[str]]:
    """Keyword values without write-time stamps, and the HISTORY entries without their times."""
    values = {
        card.keyword: card.value
        for card in header.cards
        if card.keyword not in WRITE_TIME_KEYWORDS and card.keyword not in ("HISTORY", "COMMENT", "")
    }
    history = [_HISTORY_TIME.sub("", str(entry)) for entry in header.get("HISTORY", [])]
    return values, history


def _calibration_by_name(archive_root: Path, polarization: str) -> dict[str, str]:
    """Find the delivered files a WFI image of a polarization needs, by product code in their names."""
    wanted = {
        "quartic_coefficient_path": f"F{polarization}",
        "vignetting_function_path": f"G{polarization}",
        "psf_model_path": "RC" if polarization == "R" else f"R{polarization}",
        "mask_path": "MS",
        "distortion_path": "DS",
    }
    chosen = {}
    for argument, code in wanted.items():
        [path] = sorted((archive_root / "1").rglob(f"PUNCH_L1_{code}{CAMERA.obs}_*_v1.*"))
        chosen[argument] = str(path)
    assert chosen["mask_path"].endswith(".bin")
    return chosen


def _despike_neighbours(level0_files: list[Path], level0: Path) -> list[str]:
    """Level 0 frames of the same camera and filter within 15 minutes, nearest first, at most six."""
    code, when = _parse(level0)
    others = [(abs(_parse(p)[1] - when), p) for p in level0_files if p != level0 and _parse(p)[0] == code]
    return [str(p) for distance, p in sorted(others) if distance <= DESPIKE_WINDOW][:MAX_NEIGHBOURS]


@pytest.mark.parametrize("backend", ["sqlite"])  # the science, not the storage, is under test here
def test_full_size_level1_early_matches_punchbowl_flow(config, catalog, instance, tmp_path):
    from punchbowl.data import load_ndcube_from_fits
    from punchbowl.level1.flow import level1_early_core_flow

    # Level 0 through the pipeline, then a calibration delivery through the calibration sensor's logic.
    config.calibration_image_size = SIZE
    report = simulate(TELEMETRY_START, TELEMETRY_HOURS, tmp_path / "sim", size=SIZE, seed=31, cameras=[CAMERA])
    land(report.files, config)
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0
    staging = tmp_path / "calibration"
    for path in synthesize_calibration(staging, CALIBRATION_DATE, size=SIZE, cameras=[CAMERA]):
        path.rename(Path(config.calibration_landing_dir) / path.name)
    archive_root = Path(config.archive_dir)
    deliveries = scan_calibration_landing(catalog, ArchiveResource(root=str(archive_root)), config)
    assert {d.state for d in deliveries} == {"active"}, [(d.name, d.state, d.reason) for d in deliveries]

    # Early Level 1 of the partition through Dagster, as the definitions run it.
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, partition_key=PARTITION, asset_selection=[level1_early_key(CAMERA)]
    )
    assert result.success
    (materialization,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=level1_early_key(CAMERA), asset_partitions=[PARTITION]), limit=5
    ).records
    metadata = materialization.asset_materialization.metadata
    assert (metadata["frames_made"].value, metadata["frames_failed"].value) == (2, 0), metadata["not_made"].value

    level0_files = sorted((archive_root / "0").rglob(f"PUNCH_L0_*{CAMERA.obs}_*.fits"))
    with catalog.session() as session:
        products = session.scalars(
            select(ProductFile).where(ProductFile.level == "1", ProductFile.file_type.like("X%"))
        ).all()
        lineage = {
            Path(p.path).name: {
                Path(parent.path).name
                for parent in session.scalars(
                    select(ProductFile)
                    .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
                    .where(FileRelationship.child_id == p.id)
                )
            }
            for p in products
        }
    assert sorted(p.file_type for p in products) == ["XM", "XZ"]

    for product in products:
        pipeline_file = archive_root / product.path
        polarization = product.file_type[1]
        frame = (f"P{polarization}{CAMERA.obs}", _parse(pipeline_file)[1])  # named by DATE-OBS, as Level 0
        [level0] = [p for p in level0_files if _parse(p) == frame]
        calibration = _calibration_by_name(archive_root, polarization)
        neighbours = _despike_neighbours(level0_files, level0)
        assert len(neighbours) == 3  # the three earlier frames of the polarization: despiking runs
        # The pipeline recorded the same inputs (neighbours are not lineage: they only despike).
        assert lineage[pipeline_file.name] == {level0.name} | {Path(p).name for p in calibration.values()}

        header = fits.getheader(level0, 1)
        [cube] = level1_early_core_flow(
            [str(level0)],
            gain_bottom=float(header["GAINBTM"]),
            gain_top=float(header["GAINTOP"]),
            despike_neighbors=neighbours,
            do_align=False,
            max_workers=2,
            second_vignetting_function_path=None,  # WFI: one vignetting file
            **calibration,
        )
        # Written by the pipeline's own writer (same name, other folder) and both files read back
        # with punchbowl's reader: what is compared is what the archive holds. Data and uncertainty
        # are stored with lossy quantization (a function of the values: the uncertainty's dithering
        # is seeded from the data by archive.write_ndcube_deterministically, punchbowl would seed it
        # from the clock), so identical stored values mean the same cube up to the quantization
        # step (1/16 of each row's noise); any real difference changes many of 4 million pixels.
        direct_file = tmp_path / "direct" / pipeline_file.name
        direct_file.parent.mkdir(exist_ok=True)
        ArchiveResource(root=str(tmp_path / "direct")).write_cube(cube, direct_file, skip_stats=False)

        made, direct = load_ndcube_from_fits(pipeline_file), load_ndcube_from_fits(direct_file)
        assert made.data.shape == (SIZE, SIZE)
        assert np.count_nonzero(made.data) > SIZE * SIZE // 2 and np.nanstd(made.data) > 0  # not a vacuous match
        np.testing.assert_array_equal(made.data, direct.data, err_msg=f"{pipeline_file.name}: data differ")
        np.testing.assert_array_equal(
            made.uncertainty.array, direct.uncertainty.array, err_msg=f"{pipeline_file.name}: uncertainty differs"
        )

        with fits.open(pipeline_file) as made_hdul, fits.open(direct_file) as direct_hdul:
            assert [h.name for h in made_hdul] == [h.name for h in direct_hdul]
            for index, (made_hdu, direct_hdu) in enumerate(zip(made_hdul, direct_hdul, strict=True)):
                made_values, made_history = _comparable_header(made_hdu.header)
                direct_values, direct_history = _comparable_header(direct_hdu.header)
                assert made_values == direct_values, f"{pipeline_file.name} HDU {index}: headers differ"
                assert made_history == direct_history, f"{pipeline_file.name} HDU {index}: histories differ"
                if isinstance(made_hdu, fits.BinTableHDU):  # provenance (and WCS lookup tables, if any)
                    assert made_hdu.data.tobytes() == direct_hdu.data.tobytes()
            science_header = made_hdul[1].header
            assert science_header["CALVI"] == Path(calibration["vignetting_function_path"]).name
            assert f"neighbor_count={len(neighbours)}" in " ".join(map(str, science_header["HISTORY"]))
