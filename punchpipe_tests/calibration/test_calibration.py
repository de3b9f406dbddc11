"""Calibration files: the selection rule, synthesis that punchbowl's Level 1 accepts, validation."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from punchpipe_assets.calibration.kinds import (
    CALIBRATION_KINDS,
    CalibrationError,
    calibration_codes_for,
    parse_calibration_name,
    version_key,
)
from punchpipe_assets.calibration.select import CalibrationCandidate, early_flow_arguments, select_calibration
from punchpipe_assets.calibration.synthesize import synthesize_calibration
from punchpipe_assets.calibration.validate import validate_calibration_file
from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.level0.test_assets import land

T = datetime(2025, 8, 1, 12, 0, 0)


def candidate(code: str, obs: str, when: datetime, version: str = "1") -> CalibrationCandidate:
    name = f"PUNCH_L1_{code}{obs}_{when:%Y%m%d%H%M%S}_v{version}.fits"
    return CalibrationCandidate(Path("/cal") / name, code, obs, when, version)


# --- names, kinds -------------------------------------------------------------------------------


def test_parse_calibration_name_round_trips_and_rejects_what_is_not_a_calibration():
    assert parse_calibration_name("/a/PUNCH_L1_GM4_20250801110000_v0j.fits") == (
        "GM",
        "4",
        datetime(2025, 8, 1, 11),
        "0j",
    )
    assert parse_calibration_name("PUNCH_L1_MS2_20250801110000_v12.bin")[3] == "12"
    assert CalibrationCandidate.from_path("PUNCH_L1_RC3_20250801110000_v2.fits").code == "RC"
    for bad, reason in [
        ("PUNCH_L0_PM1_20250801110000_v1.fits", "level 1"),
        ("PUNCH_L1_XM1_20250801110000_v1.fits", "not a calibration"),
        ("PUNCH_L1_RM4_20250801110000_v1.fits", "only for observatories 1, 2, 3"),
        ("PUNCH_L1_GM1_20250801110000_v1.bin", "end in .fits"),
        ("PUNCH_L1_FM1_20251301000000_v1.fits", "not a valid time"),
        ("notes.txt", "not a PUNCH file name"),
    ]:
        with pytest.raises(CalibrationError, match=reason):
            parse_calibration_name(bad)


def test_kinds_follow_punchbowl_codes_and_cameras():
    assert calibration_codes_for("CR", "1") == {
        "quartic": "FR",
        "vignetting": "GR",
        "psf": "RC",
        "mask": "MS",
        "distortion": "DS",
    }
    assert calibration_codes_for("PZ", "4") == {"quartic": "FZ", "vignetting": "GZ", "mask": "MS", "distortion": "DS"}
    vignetting = CALIBRATION_KINDS["vignetting"]
    assert vignetting.is_bracketing("4") and not vignetting.is_bracketing("1")
    assert not any(CALIBRATION_KINDS[k].bracketing for k in ("quartic", "psf", "mask", "distortion"))
    assert version_key("10") > version_key("9") > version_key("1a") > version_key("1")


# --- the selection rule -------------------------------------------------------------------------


def test_newest_version_beats_a_later_date():
    old_version_recent = candidate("FM", "1", T - timedelta(hours=1), "1")
    new_version_older = candidate("FM", "1", T - timedelta(days=30), "2")
    assert select_calibration([old_version_recent, new_version_older], T, bracketing=False) == [new_version_older]
    # numeric, not lexical: "10" is newer than "9"
    v9, v10 = candidate("FM", "1", T - timedelta(hours=1), "9"), candidate("FM", "1", T - timedelta(days=2), "10")
    assert select_calibration([v9, v10], T, bracketing=False) == [v10]
    # within the newest version, the latest date not after the observation
    a, b = candidate("FM", "1", T - timedelta(days=2), "10"), candidate("FM", "1", T - timedelta(days=1), "10")
    assert select_calibration([a, v9, b], T, bracketing=False) == [b]


def test_single_file_calibration_dated_after_the_observation_is_never_used():
    after = candidate("DS", "2", T + timedelta(seconds=1), "5")
    assert select_calibration([after], T, bracketing=False) == []
    before = candidate("DS", "2", T - timedelta(days=300), "1")
    assert select_calibration([after, before], T, bracketing=False) == [before]
    at = candidate("DS", "2", T, "1")
    assert select_calibration([after, before, at], T, bracketing=False) == [at]
    assert select_calibration([], T, bracketing=False) == []


def test_bracketing_pairs_are_the_nearest_on_each_side_within_the_newest_version():
    files = [candidate("GM", "4", T + timedelta(days=d), "2") for d in (-3, -1, 1, 4)]
    older_version_closer = [candidate("GM", "4", T + timedelta(hours=h), "1") for h in (-1, 1)]
    assert select_calibration(files + older_version_closer, T, bracketing=True) == [files[1], files[2]]
    # a file at the observation time counts as "at or before"
    at = candidate("GM", "4", T, "2")
    assert select_calibration([*files, at], T, bracketing=True) == [at, files[2]]
    # only one side: the nearest single file
    assert select_calibration(files[:2], T, bracketing=True) == [files[1]]
    assert select_calibration(files[2:], T, bracketing=True) == [files[2]]
    assert select_calibration([], T, bracketing=True) == []
    with pytest.raises(ValueError, match="one product code"):
        select_calibration([files[0], candidate("GZ", "4", T, "2")], T, bracketing=True)


def test_early_flow_arguments_map_selections_to_punchbowl_keywords():
    before, after = candidate("GM", "4", T - timedelta(days=1)), candidate("GM", "4", T + timedelta(days=1))
    mask = CalibrationCandidate.from_path("/cal/PUNCH_L1_MS4_20250101000000_v1.fits")  # catalogued as .fits
    arguments = early_flow_arguments({"vignetting": [before, after], "mask": [mask], "quartic": []})
    assert arguments == {
        "vignetting_function_path": str(before.path),
        "second_vignetting_function_path": str(after.path),
        "mask_path": "/cal/PUNCH_L1_MS4_20250101000000_v1.bin",
        "quartic_coefficient_path": None,
    }


# --- validation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> list[Path]:
    """Every kind but masks for one WFI camera at 256x256 (masks exist only at 2048)."""
    return synthesize_calibration(tmp_path_factory.mktemp("small"), T, size=256, cameras=[CAMERA_BY_OBS["1"]])


def test_small_files_are_valid_at_their_size_and_wrong_shape_for_the_camera(small_set):
    codes = sorted(parse_calibration_name(p)[0] for p in small_set)
    assert codes == sorted(["FM", "FZ", "FP", "FR", "GM", "GZ", "GP", "GR", "RM", "RZ", "RP", "RC", "DS"])
    for path in small_set:
        code, obs, _, _ = parse_calibration_name(path)
        validate_calibration_file(path, obs, code, shape=(256, 256))
        with pytest.raises(CalibrationError, match=r"shape|cover|spans") as raised:
            validate_calibration_file(path, obs, code)  # a flight camera is 2048x2048
        assert path.name in str(raised.value)
    assert not list(small_set[0].parent.glob(".staging-*"))


@pytest.mark.parametrize("code", ["GM", "FM", "RM", "DS"])
@pytest.mark.parametrize("whole_blocks", [False, True])
def test_truncated_file_is_unreadable(small_set, tmp_path, code, whole_blocks):
    source = next(p for p in small_set if parse_calibration_name(p)[0] == code)
    data = source.read_bytes()
    cut = len(data) // 2 // 2880 * 2880 if whole_blocks else len(data) * 2 // 3
    truncated = tmp_path / source.name
    truncated.write_bytes(data[:cut])
    with pytest.raises(CalibrationError, match="unreadable"):
        validate_calibration_file(truncated, "1", code, shape=(256, 256))


def test_metadata_must_match_name_and_camera(small_set, tmp_path):
    source = next(p for p in small_set if p.name.startswith("PUNCH_L1_GM1_"))
    renamed = tmp_path / source.name.replace("GM1", "GM2")
    shutil.copy(source, renamed)
    with pytest.raises(CalibrationError, match="OBSCODE is '1'.*'2'"):
        validate_calibration_file(renamed, "2", "GM", shape=(256, 256))
    retyped = tmp_path / source.name.replace("GM1", "GZ1")
    shutil.copy(source, retyped)
    with pytest.raises(CalibrationError, match="TYPECODE is 'GM'"):
        validate_calibration_file(retyped, "1", "GZ", shape=(256, 256))
    with pytest.raises(CalibrationError, match="named GM1, expected GM3"):
        validate_calibration_file(source, "3", "GM", shape=(256, 256))
    with fits.open(source) as hdul:
        hdul[1].data[:] = 0
        zeroed = tmp_path / "zero" / source.name
        zeroed.parent.mkdir()
        hdul.writeto(zeroed, checksum=True)
    with pytest.raises(CalibrationError, match="zero or negative"):
        validate_calibration_file(zeroed, "1", "GM", shape=(256, 256))


def test_mask_must_be_a_packed_2048_square(tmp_path):
    mask = tmp_path / "PUNCH_L1_MS1_20250801120000_v1.bin"
    mask.write_bytes(b"\xff" * 1000)
    with pytest.raises(CalibrationError, match="unreadable: 1000 bytes"):
        validate_calibration_file(mask, "1", "MS")
    mask.write_bytes(b"\0" * (2048 * 2048 // 8))
    with pytest.raises(CalibrationError, match="hides every pixel"):
        validate_calibration_file(mask, "1", "MS")
    with pytest.raises(ValueError, match="masks exist only at 2048"):
        synthesize_calibration(tmp_path, T, size=256, kinds=["mask"])


# --- full size, through punchbowl's Level 1 -----------------------------------------------------


def select_for(paths: list[Path], typecode: str, obs: str, when: datetime) -> dict:
    """Choose each kind's file(s) for an image; vignetting always as a bracketing pair here."""
    candidates = [CalibrationCandidate.from_path(p) for p in paths]
    selection = {}
    for name, code in calibration_codes_for(typecode, obs).items():
        of_code = [c for c in candidates if (c.code, c.obs) == (code, obs)]
        selection[name] = select_calibration(of_code, when, bracketing=name == "vignetting")
    return selection


@pytest.mark.science
@pytest.mark.parametrize("backend", ["sqlite"])
def test_full_size_calibration_runs_through_level1_early_core_flow(config, instance, tmp_path):
    from punchbowl.level1.flow import level1_early_core_flow
    from punchbowl.util import load_mask_file

    from punchpipe_assets.cli import run_process
    from punchpipe_assets.simulate import simulate

    cameras = [CAMERA_BY_OBS["1"], CAMERA_BY_OBS["4"]]
    report = simulate(SIMULATION_START, 0.05, tmp_path / "sim", size=2048, seed=5, cameras=cameras)
    land(report.files, config)
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0

    calibration = tmp_path / "calibration"
    before = synthesize_calibration(calibration, SIMULATION_START - timedelta(days=1), cameras=cameras)
    after = synthesize_calibration(
        calibration, SIMULATION_START + timedelta(days=1), cameras=cameras, kinds=["vignetting"]
    )
    assert len(before) == 2 * 14 - 4 and len(after) == 2 * 4  # NFI has no PSF models
    for path in before + after:
        code, obs, _, _ = parse_calibration_name(path)
        validate_calibration_file(path, obs, code)

    for camera in cameras:
        level0 = sorted(Path(config.archive_dir).rglob(f"PUNCH_L0_PM{camera.obs}_*.fits"))[0]
        when = datetime.fromisoformat(fits.getheader(level0, 1)["DATE-OBS"])
        selection = select_for(before + after, "PM", camera.obs, when)
        assert [c.date_obs.day for c in selection["vignetting"]] == [31, 2]  # the bracketing pair
        arguments = early_flow_arguments(selection)
        assert all(arguments.values())  # quartic, vignetting + second, mask, distortion (+ PSF for WFI)
        assert ("psf_model_path" in arguments) == (camera.instrument == "WFI")

        [cube] = level1_early_core_flow([str(level0)], do_align=False, max_workers=2, **arguments)

        assert cube.meta["TYPECODE"].value == "XM" and cube.meta["OBSCODE"].value == camera.obs
        assert cube.meta["LEVEL"].value == "1"
        assert cube.data.shape == (2048, 2048) and np.isfinite(cube.data).all()
        mask = load_mask_file(arguments["mask_path"])
        assert np.all(cube.data[~mask] == 0) and np.all(cube.data[mask] >= 0) and cube.data[mask].mean() > 0
        assert cube.meta["CALCF"].value == Path(arguments["quartic_coefficient_path"]).name
        assert cube.meta["CALVI"].value == Path(arguments["vignetting_function_path"]).name
        assert cube.meta["CALVI2"].value == Path(arguments["second_vignetting_function_path"]).name
        history = " | ".join(entry.comment for entry in cube.meta.history)
        assert "Quartic fit correction completed" in history
        assert f"and {Path(arguments['second_vignetting_function_path']).name}" in history  # interpolated
        if camera.instrument == "WFI":
            assert cube.meta["CALPSF"].value == Path(arguments["psf_model_path"]).name
            assert "PSF corrected with" in history


def test_alphas_files_are_validated_as_punchbowl_reads_them(tmp_path):
    from punchpipe_assets.calibration.bootstrap import synthesize_alphas
    from punchpipe_assets.calibration.kinds import CalibrationError
    from punchpipe_assets.calibration.validate import validate_alphas_file, validate_calibration_file

    good = synthesize_alphas(tmp_path, datetime(2025, 7, 1))
    assert good.name == "PUNCH_L2_ALM_20250701000000_v1.csv"
    validate_calibration_file(good, "M", "AL", level="2")
    assert validate_alphas_file(good)["CR3"] == 1.0
    bad = good.with_name("PUNCH_L2_ALM_20250701000000_v2.csv")
    for text, reason in (
        ("Prod Code,Alpha\nCR1,0\n", "images are divided by it"),
        ("Prod Code,Alpha\nXX9,1.0\n", "not a camera product code"),
        ("Prod Code,Alpha\nCR1,abc\n", "not a number"),
        ("Prod Code,Alpha\n", "expected rows"),
    ):
        bad.write_text(text)
        with pytest.raises(CalibrationError, match=reason):
            validate_alphas_file(bad)
